"""Scripts the test model's replies inside the real mlx_lm.server (loaded from PYTHONPATH).

When MLX_SCRIPT_FILE is set, mlx_lm.sample_utils.make_logits_processors (which the server calls
for every request's processors) is wrapped: a request whose `logit_bias` names the token
MLX_SCRIPT_MARK gets, after the server's own processors, one that forces the tokens of reply
number `logit_bias[MARK]` from the file (a JSON list of token-id lists), then the eos token. The
real sampler, detokenizer, text state machine and tool parsers still run on what it forces.

MLX_BREAK_SWITCH=1 instead makes `TokenizerWrapper.has_tool_calling` a plain attribute, as a
future mlx-lm might, to check that scripts/mlx-raw-server refuses to start then.
"""

import json
import os

if os.environ.get("MLX_BREAK_SWITCH") == "1":
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    TokenizerWrapper.has_tool_calling = True

_path = os.environ.get("MLX_SCRIPT_FILE")
if _path:
    import mlx.core as mx
    import mlx_lm.sample_utils as _su

    _MARK = int(os.environ.get("MLX_SCRIPT_MARK", "271"))
    _EOS = int(os.environ.get("MLX_SCRIPT_EOS", "258"))
    _original = _su.make_logits_processors

    class _Force:
        """Forces one token per generated position: the reply's, then eos for ever."""

        def __init__(self, ids):
            self.ids = list(ids) + [_EOS]
            self.i = 0

        def __call__(self, tokens, logits):
            token = self.ids[min(self.i, len(self.ids) - 1)]
            self.i += 1
            hit = mx.arange(logits.shape[-1]) == token
            forced = mx.where(hit, mx.array(0.0), mx.array(-1e9)).astype(logits.dtype)
            return mx.broadcast_to(forced, logits.shape)

    def make_logits_processors(logit_bias=None, *args, **kwargs):
        script = None
        if logit_bias and _MARK in logit_bias:
            logit_bias = dict(logit_bias)
            number = int(logit_bias.pop(_MARK))
            with open(_path, encoding="utf-8") as f:
                script = json.load(f)[number]
            logit_bias = logit_bias or None
        processors = _original(logit_bias, *args, **kwargs)
        if script is not None:
            processors.append(_Force(script))
        return processors

    _su.make_logits_processors = make_logits_processors
