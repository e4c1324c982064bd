"""The ``flowrt`` command. It knows nothing of protocols: it calls the library and renders."""
