from tunecluster.cli import main

main()
