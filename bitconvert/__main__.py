from bitconvert.cli import main

main()
