"""A byte-level tokenizer built in memory: no vocabulary files, no downloads.

Used by the small model specs in place of FLUX's CLIP and T5 tokenizers. Every UTF-8 byte is one
token (256 ids), followed by four special tokens. It is a ``transformers``
``PreTrainedTokenizerFast``, so diffusers' ``FluxPipeline.encode_prompt`` drives it exactly like
the real tokenizers and ``save_pretrained`` writes it beside the model.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, processors
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
BYTE_VOCAB_SIZE = 256
VOCAB_SIZE = BYTE_VOCAB_SIZE + len(SPECIAL_TOKENS)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(BYTE_VOCAB_SIZE, VOCAB_SIZE)


def byte_level_tokenizer(*, max_length: int, add_bos: bool) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with ``VOCAB_SIZE`` ids.

    Args:
        max_length: ``model_max_length`` (77 for the CLIP-like encoder, 512 for the T5-like one).
        add_bos: CLIP style ``<bos> text <eos>`` when true, T5 style ``text <eos>`` otherwise.
    """
    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    template = "<bos> $A <eos>" if add_bos else "$A <eos>"
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("<bos>", BOS_ID), ("<eos>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )
