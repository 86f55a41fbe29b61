"""Text for clients that want it: the model directory's tokenizer.json when the `tokenizers`
package is there, else a byte-level stand-in (exact, reversible, no download).

The plugin always sends `input_ids` and launches with --skip-tokenizer-init; this is for
SGLang's own clients (bench_serving counts streamed tokens by their `text`).
"""

from __future__ import annotations

from pathlib import Path

_BYTE_BASE = 1000  # byte b <-> id 1000 + b: clear of special ids in every vocabulary


class SimTokenizer:
    def __init__(self, model_dir: str | None, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._hf = None
        path = Path(model_dir) / "tokenizer.json" if model_dir else None
        if path is not None and path.is_file():
            try:
                from tokenizers import Tokenizer

                self._hf = Tokenizer.from_file(str(path))
            except (ImportError, Exception):  # a broken or foreign tokenizer.json: fall back
                self._hf = None

    @property
    def kind(self) -> str:
        return "tokenizer.json" if self._hf is not None else "bytes"

    def encode(self, text: str) -> list[int]:
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=False).ids)
        return [_BYTE_BASE + b for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        if self._hf is not None:
            return self._hf.decode(ids)
        # Generated ids are arbitrary: show each as a word so streamed text grows with every token.
        return "".join(chr(i - _BYTE_BASE) if _BYTE_BASE + 32 <= i < _BYTE_BASE + 127 else f" <{i}>" for i in ids)
