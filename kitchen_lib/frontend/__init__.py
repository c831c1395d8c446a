"""Front end: how people reach the library.

cli and flags (python -m kitchen_lib ...), quickstart, course (what the notebooks share), widgets
(the notebooks' ipywidgets: the one module that imports IPython's world).

May import: base, data, model, training, inference, frontend.
"""
