from hdus_edge.cli.entry import main

main()
