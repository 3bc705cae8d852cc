from sr_tile.cli import main

main()
