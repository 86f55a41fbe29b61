"""pytest-ppd: measure append-prefill under SGLang prefill/decode disaggregation."""

__version__ = "0.1.0"
