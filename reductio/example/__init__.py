"""The bundled example: letter bigram counts over the words file."""
