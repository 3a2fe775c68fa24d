"""The machinery every step runs on: configs, run folders, the training loop, processes and caches.

Nothing here knows the method: the modules import only each other and third-party code, so any
floor above may use them. This package's ``__init__`` imports nothing, so importing one module never
runs another.
"""
