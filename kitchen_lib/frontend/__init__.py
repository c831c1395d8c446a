"""Front end: how people reach the library.

cli, cli_data and flags (python -m kitchen_lib ...), quickstart, course (what the notebooks share),
widgets and drive_widget (the notebooks' ipywidgets: the only modules that import IPython's world).

May import: base, data, model, training, inference, frontend.
"""
