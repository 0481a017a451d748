from jobherald.cli import main

main()
