"""Text for clients that want it (engines started without --skip-tokenizer-init).

    tok = SimTokenizer(None, vocab_size=128256)       # the stand-in: no files, no packages
    tok.decode(tok.encode("hi <42>"))                  # 'hi <42>'
    tok.apply_chat_template([{"role": "user", "content": "hi"}])   # '<|user|>\\nhi\\n<|assistant|>\\n'

Which tokenizer serves:

- ``--tokenizer-path DIR``: that Hugging Face tokenizer, through ``transformers`` (AutoTokenizer, with the
  directory's chat template) or else ``tokenizers`` (its tokenizer.json, stand-in chat template). Neither
  package is a dependency of pytest-ppd; a named directory that cannot be loaded is an error.
- no --tokenizer-path: the model directory's tokenizer the same way when it has one and a package can
  load it, else the stand-in.
- the stand-in: UTF-8 byte b -> id 1000 + b (clear of special ids in every vocabulary); id 1000 + b of
  an ASCII byte -> that character, and any other id N <-> the text " <N>" (so non-ASCII text comes back
  as ids). Every id decodes to non-empty text, so streamed text grows with every token, and decoded
  text encodes back to the same ids (a multi-turn chat re-sends the assistant's output as the same
  tokens, so it hits the prefix cache as it would on SGLang). A prompt that spells " <N>" means id N.

The stand-in chat template: one block ``<|ROLE|>\\nCONTENT\\n`` per message, then ``<|assistant|>\\n``.
The plugin itself always sends ``input_ids`` to engines launched with --skip-tokenizer-init.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from pytest_ppd.errors import ConfigError

_BYTE_BASE = 1000  # byte b <-> id 1000 + b: clear of special ids in every vocabulary
_ID_TEXT = re.compile(r" <(\d{1,9})>")
log = logging.getLogger("pytest_ppd.sim")


def chat_text_parts(content: Any) -> str:
    """A message's content as text: a string, or the text of its ``{"type": "text"}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


def standin_chat_template(messages: list[dict[str, Any]]) -> str:
    """The documented stand-in template: role tags, then the assistant's tag (add_generation_prompt)."""
    return "".join(f"<|{m['role']}|>\n{chat_text_parts(m.get('content'))}\n" for m in messages) + "<|assistant|>\n"


class SimTokenizer:
    """encode/decode/apply_chat_template of the engine; see the module docstring for which one serves."""

    def __init__(self, tokenizer_path: str | None, vocab_size: int, *, model_dir: str | None = None) -> None:
        self.vocab_size = vocab_size
        self._hf: Any = None  # transformers' PreTrainedTokenizer
        self._fast: Any = None  # tokenizers' Tokenizer
        if tokenizer_path:
            self._load(Path(tokenizer_path), required=True)
        elif model_dir:
            self._load(Path(model_dir), required=False)
        log.info("tokenizer: %s", self.kind)

    def _load(self, path: Path, required: bool) -> None:
        if required and not path.exists():
            raise ConfigError(f"--tokenizer-path {path}: no such directory; give a Hugging Face tokenizer directory")
        directory = path if path.is_dir() else path.parent
        has_files = (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file()
        if not has_files and not required:
            return
        try:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(directory))
            return
        except ImportError:
            pass
        except Exception as exc:  # a broken or foreign directory: say so, or fall back to the stand-in
            if required and not (directory / "tokenizer.json").is_file():
                raise ConfigError(f"--tokenizer-path {path}: transformers cannot load it ({exc})") from None
        try:
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(directory / "tokenizer.json"))
        except ImportError:
            if required:
                raise ConfigError(f"--tokenizer-path {path} needs the `tokenizers` (or `transformers`) package: "
                                  "pip install tokenizers") from None
        except Exception as exc:
            if required:
                raise ConfigError(f"--tokenizer-path {path}: no loadable tokenizer.json ({exc})") from None

    @property
    def kind(self) -> str:
        if self._hf is not None:
            return f"transformers ({type(self._hf).__name__})"
        return "tokenizer.json" if self._fast is not None else "stand-in (bytes and <id>)"

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of text; special: add the tokenizer's BOS and the like (SGLang does for text prompts)."""
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=special))
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=special).ids)
        ids: list[int] = []
        pos = 0
        for m in _ID_TEXT.finditer(text):
            if int(m.group(1)) >= self.vocab_size:
                continue
            ids += [_BYTE_BASE + b for b in text[pos:m.start()].encode("utf-8")]
            ids.append(int(m.group(1)))
            pos = m.end()
        return ids + [_BYTE_BASE + b for b in text[pos:].encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        if self._hf is not None:
            return str(self._hf.decode(ids, skip_special_tokens=True))
        if self._fast is not None:
            return str(self._fast.decode(ids))
        # Token by token (ASCII bytes as themselves, anything else as " <id>"), so the text of a prefix of
        # the ids is a prefix of the text: cumulative streamed text only ever grows.
        return "".join(chr(i - _BYTE_BASE) if _BYTE_BASE <= i < _BYTE_BASE + 128 else f" <{i}>" for i in ids)

    def decode_more(self, ids: list[int], start: int, text: str) -> str:
        """decode(ids), given text == decode(ids[:start]): the stand-in decodes only the new ids, so a long
        stream costs the engine's event loop O(n), not O(n^2); a real tokenizer decodes the whole again."""
        if self._hf is None and self._fast is None:
            return text + self.decode(ids[start:])
        return self.decode(ids)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text of a chat: the tokenizer's own template where transformers has one, else the stand-in."""
        if self._hf is not None and getattr(self._hf, "chat_template", None):
            return str(self._hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        return standin_chat_template(messages)
