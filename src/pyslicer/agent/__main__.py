from pyslicer.agent.server import main

main()
