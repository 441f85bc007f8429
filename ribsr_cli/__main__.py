from ribsr_cli.cli import main

main()
