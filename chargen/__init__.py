"""chargen: character-level recurrent language models written from their equations.

Importing the package is cheap: TensorFlow loads only with the modules that need it.
"""

__version__ = "0.1.0"
