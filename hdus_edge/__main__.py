from hdus_edge.cli.app import main

main()
