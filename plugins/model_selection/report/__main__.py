from model_selection.report.cli import main

main()
