"""IET (individualized exploratory transformer): attention over a content-adaptive candidate
set per token. The family's package: the individualized attention and its candidate
bookkeeping (``attention``); the model, runner and training task follow."""
