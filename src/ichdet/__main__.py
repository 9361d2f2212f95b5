from ichdet.cli import main

main()
