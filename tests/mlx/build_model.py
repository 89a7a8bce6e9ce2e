"""Builds a tiny model the real mlx_lm.server loads, without any download.

Qwen3 architecture (hidden size 32, one layer), random weights saved with mlx, a byte-level BPE
tokenizer built with `tokenizers` (byte b is token b, no merges) with Qwen's markers as added
tokens, and a chat template in the Qwen3-Coder or the Hermes style (from which mlx-lm infers its
`qwen3_coder` or `json_tools` parser). What the "model" writes is scripted by site/sitecustomize.py.

    python build_model.py DIR coder|hermes
"""

import json
import sys
from pathlib import Path

# Token ids the harness and sitecustomize.py rely on.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # 256, 257, 258 (eos)
MARKERS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]  # 259 … 262
VOCAB_SIZE = 272  # 271: the script mark (never generated unless forced)

CODER_TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these tools:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
Call one like this:
<tool_call>
<function=NAME>
<parameter=NAME>
value
</parameter>
</function>
</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tc in message.tool_calls %}
<tool_call>
<function={{ tc.function.name }}>
</function>
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these tools:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
Call one as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.name or tool_call.function.name }}"}
</tool_call>
{%- endfor %}<|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def bytes_to_unicode():
    """GPT-2's byte-to-character map, which the ByteLevel pre-tokenizer and decoder use."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    chars = bytes_to_unicode()
    vocab = {chars[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKERS])
    for i, t in enumerate(SPECIAL + MARKERS):
        assert tok.token_to_id(t) == 256 + i, (t, tok.token_to_id(t))
    return tok


def build(out: Path, style: str):
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.qwen3 import Model, ModelArgs

    out.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "bos_token_id": 256,
        "eos_token_id": 258,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    mx.random.seed(0)
    model = Model(ModelArgs.from_dict(config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    tokenizer().save(str(out / "tokenizer.json"))
    template = CODER_TEMPLATE if style == "coder" else HERMES_TEMPLATE
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "model_max_length": 32768,
                "chat_template": template,
            },
            indent=1,
        )
    )
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [258]}))


def encode(text: str):
    """The token ids of a scripted reply."""
    return tokenizer().encode(text, add_special_tokens=False).ids


if __name__ == "__main__":
    build(Path(sys.argv[1]), sys.argv[2])
