"""``python -m onnxslim`` runs the command line."""

from onnxslim.cli import main

main()
