"""The factorization-curse paper's MLM-U model (Kitouni et al. 2024, Appendix G): an encoder over
the visible tokens and a decoder that asks for one position at a time.

    encoder   pre-norm self-attention blocks (GPT style) over the token embeddings, rotary
              positions (RoPE), no absolute position embedding. Query q may attend to key k when
              the attention mask allows it; masked tokens are never keys.
    decoder   its input at *every* position is one shared learnable vector, so the only thing
              that says which token is asked for is the position, which enters through RoPE in
              cross-attention. Each decoder block = cross-attention into the encoder + an MLP
              (no decoder self-attention: every prediction is computed independently, from the
              encoder states it is allowed to see). `cross_attention: corresponding` (the paper's
              text, and XLNet's two streams) reads the keys and values that the encoder block of
              the same depth computed, i.e. the visible tokens as they enter that block;
              `cross_attention: last` (the authors' released code) projects keys and values of its
              own from the last encoder layer's output.
    output    p(x_p | visible tokens) = softmax(W h_p) at decoder position p.
    sink      `attention_sink: true` gives every attention layer one learned key and value per
              head, without a position, that every query may attend to: a place to put attention
              when no visible token is useful. A BOS does that job too but, being at position 0,
              tells every query its absolute position, which masked models use to memorise answers
              by position (see `model.add_bos_token`).

Which keys a position sees (the same masks `mft.collator` builds for decoder-only models):

    4D mask [B, 1, L, L]  (masked objectives, PLM, masked decoding): query position p asks for
                          token p. The encoder's self-attention uses the mask as given. The
                          decoder's cross-attention uses `query_attention_mask` when one is given
                          (PLM: the content stream sees its own token, the query stream does not),
                          else the same mask without its diagonal: the decoder at p never reads
                          the encoder state at p, the only state built from the input at p.
    2D mask or none       (next-token objectives, causal decoding): causal. The encoder state at i
                          sees tokens <= i, and the decoder at position i asks for token i + 1
                          (its RoPE position is i + 1) from encoder states <= i, so logits at i
                          predict x_{i+1}, as for any causal LM.

So in a masked row the input id at a hidden position (mft writes the mask token there) reaches no
prediction at all: no mask token is needed, as in the paper, and none can leak a hidden token.

Hand-written because no library model has this two-stream shape (XLNet's is the closest and is
built around relative segment encodings and memory). Sizes follow the authors' small-task
setting by default: 4 layers, 4 heads, d = 256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class EncoderDecoderConfig(PretrainedConfig):
    model_type = "mft_encoder_decoder"

    def __init__(self, vocab_size: int = 1024, hidden_size: int = 256, num_hidden_layers: int = 4,
                 num_decoder_layers: int | None = None, num_attention_heads: int = 4, intermediate_size: int = 1024,
                 max_position_embeddings: int = 512, rope_theta: float = 10000.0, cross_attention: str = "corresponding",
                 attention_sink: bool = False, dropout: float = 0.0, initializer_range: float = 0.02, layer_norm_eps: float = 1e-5,
                 tie_word_embeddings: bool = False, **kwargs):
        if cross_attention not in ("last", "corresponding"):
            raise ValueError(f"cross_attention = {cross_attention!r}; use 'last' or 'corresponding'")
        if hidden_size % num_attention_heads or (hidden_size // num_attention_heads) % 2:
            raise ValueError(f"hidden_size = {hidden_size} must split into {num_attention_heads} heads of even size")
        num_decoder_layers = num_hidden_layers if num_decoder_layers is None else num_decoder_layers
        if cross_attention == "corresponding" and num_decoder_layers != num_hidden_layers:
            raise ValueError("cross_attention = 'corresponding' needs as many decoder layers as encoder layers")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.cross_attention = cross_attention
        self.attention_sink = attention_sink
        self.dropout = dropout
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE: rotate each pair of channels (i, i + d/2) of x [B, H, L, d] by position * theta^(-2i/d)."""
    half = x.shape[-1] // 2
    frequencies = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions[:, None, :, None].float() * frequencies  # [B, 1, L, d/2]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    """Multi-head attention of queries (at `query_positions`) into given keys/values. With
    `own_keys` it projects its own keys and values (`keys_values`); without, it is handed another
    module's (the decoder reading the corresponding encoder layer's)."""

    def __init__(self, config: EncoderDecoderConfig, own_keys: bool = True):
        super().__init__()
        self.heads, self.theta, self.dropout = config.num_attention_heads, config.rope_theta, config.dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        if own_keys:
            self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
            self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        if config.attention_sink:  # zeros: the sink starts with score 0 and carries no content
            head_size = config.hidden_size // self.heads
            self.sink_key = nn.Parameter(torch.zeros(self.heads, 1, head_size))
            self.sink_value = nn.Parameter(torch.zeros(self.heads, 1, head_size))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotate(self._heads(self.k_proj(x)), positions, self.theta), self._heads(self.v_proj(x))

    def forward(self, queries, query_positions, keys_values, allowed):
        batch, q_len, width = queries.shape
        k, v = keys_values
        q = rotate(self._heads(self.q_proj(queries)), query_positions, self.theta)
        if hasattr(self, "sink_key"):  # one more key, first, that every query may attend to
            k = torch.cat([self.sink_key.to(k.dtype).expand(batch, -1, -1, -1), k], dim=2)
            v = torch.cat([self.sink_value.to(v.dtype).expand(batch, -1, -1, -1), v], dim=2)
            allowed = torch.cat([allowed.new_ones(*allowed.shape[:-1], 1), allowed], dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(batch, q_len, width))


class MLP(nn.Module):
    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class EncoderBlock(nn.Module):
    def __init__(self, config: EncoderDecoderConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = Attention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, positions, allowed):
        """(output, the block's keys and values), the latter for a decoder block that shares them."""
        h = self.attention_norm(x)
        keys_values = self.attention.keys_values(h, positions)
        x = x + self.attention(h, positions, keys_values, allowed)
        return x + self.mlp(self.mlp_norm(x)), keys_values


class DecoderBlock(nn.Module):
    """Cross-attention into the encoder + an MLP. `shared_keys`: attend to the keys and values the
    corresponding encoder block computed (as XLNet's query stream reads its content stream);
    otherwise project keys and values of its own from the encoder states it is given."""

    def __init__(self, config: EncoderDecoderConfig, shared_keys: bool):
        super().__init__()
        self.query_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if not shared_keys:
            self.memory_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attention = Attention(config, own_keys=not shared_keys)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, h, query_positions, memory, allowed):
        """`memory`: (keys, values) of the corresponding encoder block, or encoder states [B, L, d]
        with their positions as (states, positions)."""
        if not hasattr(self, "memory_norm"):
            keys_values = memory
        else:
            states, positions = memory
            keys_values = self.cross_attention.keys_values(self.memory_norm(states), positions)
        h = h + self.cross_attention(self.query_norm(h), query_positions, keys_values, allowed)
        return h + self.mlp(self.mlp_norm(h))


class EncoderDecoderPreTrainedModel(PreTrainedModel):
    config_class = EncoderDecoderConfig
    base_model_prefix = "model"
    _supports_sdpa = True
    _no_split_modules = ["EncoderBlock", "DecoderBlock"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Attention) and hasattr(module, "sink_key"):
            nn.init.zeros_(module.sink_key)
            nn.init.zeros_(module.sink_value)
        elif isinstance(module, EncoderDecoderForMaskedPrediction):
            nn.init.normal_(module.query, mean=0.0, std=std)


class EncoderDecoderForMaskedPrediction(EncoderDecoderPreTrainedModel):
    """The model; `forward` returns logits [B, L, vocab] (see the module docstring for which
    position predicts which token from what)."""

    def __init__(self, config: EncoderDecoderConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.query = nn.Parameter(torch.zeros(config.hidden_size))  # the decoder's one shared input
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.num_hidden_layers))
        self.encoder_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        shared = config.cross_attention == "corresponding"
        self.decoder = nn.ModuleList(DecoderBlock(config, shared) for _ in range(config.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, query_attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutput:
        batch, length = input_ids.shape
        device = input_ids.device
        causal = attention_mask is None or attention_mask.dim() == 2
        if causal:
            key_valid = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None
                         else attention_mask.bool())
            if position_ids is None:  # left padding (generation): count from the first real token
                position_ids = (key_valid.long().cumsum(-1) - 1).clamp_min(0)
            lower = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            allowed = lower[None] & key_valid[:, None, :]
            allowed = (allowed | torch.eye(length, dtype=torch.bool, device=device))[:, None]
            query_allowed = allowed
            query_positions = position_ids + 1
        else:
            allowed = as_bool_mask(attention_mask)
            if query_attention_mask is None:  # a position never reads its own encoder state (see above)
                query_allowed = allowed & ~torch.eye(length, dtype=torch.bool, device=device)
            else:
                query_allowed = as_bool_mask(query_attention_mask)
            if position_ids is None:
                position_ids = torch.arange(length, device=device).expand(batch, length)
            query_positions = position_ids
        allowed, query_allowed = with_some_key(allowed), with_some_key(query_allowed)

        x = self.embed_tokens(input_ids)
        keys_values = []
        for block in self.encoder:
            x, block_keys_values = block(x, position_ids, allowed)
            keys_values.append(block_keys_values)
        if self.config.cross_attention == "corresponding":
            memories = keys_values
        else:
            memories = [(self.encoder_norm(x), position_ids)] * len(self.decoder)
        h = self.query.to(x.dtype).expand(batch, length, -1)
        for block, memory in zip(self.decoder, memories):
            h = block(h, query_positions, memory, query_allowed)
        logits = self.lm_head(self.decoder_norm(h))

        loss = None
        if labels is not None:  # labels aligned with the logits, as mft's rows are (no shift here)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """A 4D mask as bool, True = may attend (mft's additive float masks hold 0 where allowed)."""
    return mask if mask.dtype == torch.bool else mask == 0


def with_some_key(allowed: torch.Tensor) -> torch.Tensor:
    """Give a query that may attend to nothing its own position, so attention stays finite; such a
    query is never one whose prediction is trained (mft's objectives always leave it a key)."""
    empty = ~allowed.any(-1, keepdim=True)
    if not empty.any():
        return allowed
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return allowed | (empty & eye)


def register() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` / `AutoModelForMaskedLM` know the model, so
    `from_pretrained` reloads a saved run."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    AutoConfig.register(EncoderDecoderConfig.model_type, EncoderDecoderConfig, exist_ok=True)
    AutoModelForCausalLM.register(EncoderDecoderConfig, EncoderDecoderForMaskedPrediction, exist_ok=True)
    AutoModelForMaskedLM.register(EncoderDecoderConfig, EncoderDecoderForMaskedPrediction, exist_ok=True)


register()

__all__ = ["EncoderDecoderConfig", "EncoderDecoderForMaskedPrediction", "register"]
