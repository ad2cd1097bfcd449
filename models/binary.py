"""Binary transformers: a BiT-style binary BERT and a BiViT-style binary ViT, whose eval forward
computes exactly the binarized math of the official code (facebookresearch/bit,
ThisisBillhe/BiViT). Nothing here packs bits: the float tensors take two values each, and
edgec's binarization passes turn that into bit-packed kernels.

BiT (Liu et al., "BiT: Robustly Binarized Multi-distilled Transformer", NeurIPS 2022):
- weights W_b = mean|W| * sign(W - mean(W)), one scale per matrix; word embeddings one scale
  per row (mean over the whole table). Position and token-type embeddings, LayerNorm, softmax
  and the classifier stay full precision; the FFN activation is ReLU.
- every binary linear first adds a learnable per-feature bias (`move`) to its input, then
  binarizes it elastically with a learnable step alpha: alpha * sign(x) for signed inputs,
  alpha * clamp(round(x / alpha), 0, 1) for non-negative ones (after ReLU, and the attention
  probabilities). Q, K and V are binarized after their projections (signed).
- the official attention also holds `move_q`, `move_k`, `move_v`, computes them, and then
  discards the result; they stay as parameters (they count in the 109,593,721 of the base
  backbone) and, as there, have no effect.

BiViT (He et al., "BiViT: Extremely Compressed Binary Vision Transformers", ICCV 2023):
- weights alpha_c * sign(W_c - mean(W_c)) with alpha_c = mean|W_c| per output channel;
  activations and Q, K, V by sign; attention by softmax-aware binarization
  P_b = 1[softmax(s) >= 0.25 * rowmax(softmax(s))]. The patch embedding, norms, position
  embedding and head stay full precision (DeiT-Tiny geometry).
- the official straight-through expression `P_b - s.detach() + s` equals P_b only up to
  float rounding; the eval forward here uses P_b exactly, the value it stands for.

Two choices keep the math exact, and identical on every runtime:
- a binary product is computed as (codes_x codes_W^T) * (alpha * m): integer sums of +-1 are
  exact in float32 whatever the summation order, then one multiply applies the scales. The
  official (alpha sign x)(m sign W)^T is the same value mathematically, but its rounding
  depends on the order of the sum, so a sum that should be zero comes out as +-1e-9 on one
  runtime and 0 on another, and the next sign() flips a bit. Bit kernels compute it this way.
- sign() maps 0 to +1 (the bit-kernel convention): torch.sign(0) = 0 is a third value no
  1-bit code can hold. Zero occurs only on exact ties (an even-length sum of +-1); everywhere
  else this is the official code's value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-5


def binarize(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def bwn(weight: torch.Tensor, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """BiT's weight binarization, as (codes, scale): sign(W - mean(W)) and mean|W|
    (one scale per tensor, or per row for embeddings)."""
    scale = weight.abs().mean(dim=1, keepdim=True) if per_row else weight.abs().mean()
    return binarize(weight - weight.mean()), scale


def channel_sign(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BiViT's weight binarization, as (codes, scale): sign(W_c - mean(W_c)), mean|W_c|."""
    return binarize(weight - weight.mean(dim=-1, keepdim=True)), weight.abs().mean(dim=1)


class ElasticBinarizer(nn.Module):
    """Codes of alpha * sign(x) (signed: +-1) or alpha * clamp(round(x / alpha), 0, 1)
    (unsigned: 0/1); the step `alpha` is applied by the consumer (`step`)."""

    def __init__(self, signed: bool) -> None:
        super().__init__()
        self.signed = signed
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.calibrating = False

    def step(self) -> torch.Tensor:
        return torch.where(self.alpha > _EPS, self.alpha, torch.tensor(_EPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:  # the official first-batch initialisation of the step size
            with torch.no_grad():
                self.alpha.copy_((2.0 if self.signed else 4.0) * x.abs().mean())
        if self.signed:
            return binarize(x)
        return torch.clamp(torch.round(x / self.step()), 0, 1)


class LearnableBias(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class BitLinear(nn.Linear):
    """BiT's QuantizeLinear at 1 bit: binary weight, moved and binarized input, float bias."""

    def __init__(self, cin: int, cout: int, signed_input: bool = True) -> None:
        super().__init__(cin, cout)
        self.move = LearnableBias(cin)
        self.act_quantizer = ElasticBinarizer(signed_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale = bwn(self.weight)
        x = self.act_quantizer(self.move(x))
        return F.linear(x, codes) * (self.act_quantizer.step() * scale) + self.bias


class BitEmbedding(nn.Embedding):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        codes, scale = bwn(self.weight, per_row=True)
        return F.embedding(ids, codes * scale, self.padding_idx)


class BertLayerNorm(nn.Module):
    """TF-style LayerNorm of the official BERT code (epsilon inside the square root)."""

    def __init__(self, dim: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        s = (x - u).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - u) / torch.sqrt(s + self.eps) + self.bias


class BitSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = BitLinear(dim, dim)
        self.key = BitLinear(dim, dim)
        self.value = BitLinear(dim, dim)
        self.move_q = LearnableBias(dim)  # computed and discarded by the official forward
        self.move_k = LearnableBias(dim)
        self.move_v = LearnableBias(dim)
        self.clip_query = ElasticBinarizer(signed=True)
        self.clip_key = ElasticBinarizer(signed=True)
        self.clip_value = ElasticBinarizer(signed=True)
        self.clip_attn = ElasticBinarizer(signed=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.clip_query(self._heads(self.query(x)))
        k = self.clip_key(self._heads(self.key(x)))
        v = self.clip_value(self._heads(self.value(x)))
        qk_scale = self.clip_query.step() * self.clip_key.step() / math.sqrt(self.head_dim)
        scores = (q @ k.transpose(-1, -2)) * qk_scale + mask
        probs = self.clip_attn(scores.softmax(dim=-1))
        ctx = (probs @ v) * (self.clip_attn.step() * self.clip_value.step())
        ctx = ctx.permute(0, 2, 1, 3)
        return ctx.reshape(ctx.shape[0], ctx.shape[1], -1)


class BitLayer(nn.Module):
    """A BiT encoder layer; BiPFT's changes the attention, the norms and the FFN activation
    (whose output the second FFN layer binarizes signed when it can be negative)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn: int,
        attention: Callable[[int, int], nn.Module] = BitSelfAttention,
        norm: Callable[[int], nn.Module] = BertLayerNorm,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.relu,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.attention = nn.Module()
        self.attention.self = attention(dim, heads)
        self.attention.output = nn.Module()
        self.attention.output.dense = BitLinear(dim, dim)
        self.attention.output.LayerNorm = norm(dim)
        self.intermediate = nn.Module()
        self.intermediate.dense = BitLinear(dim, ffn)
        self.output = nn.Module()
        # after ReLU the input is non-negative: {0, 1} codes
        self.output.dense = BitLinear(ffn, dim, signed_input=activation is not F.relu)
        self.output.LayerNorm = norm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.attention.output
        a = out.LayerNorm(out.dense(self.attention.self(x, mask)) + x)
        h = self.activation(self.intermediate.dense(a))
        return self.output.LayerNorm(self.output.dense(h) + a)


class BitBertModel(nn.Module):
    """The backbone: embeddings, encoder, pooler (what the 109,593,721 counts)."""

    def __init__(
        self,
        vocab: int,
        dim: int,
        depth: int,
        heads: int,
        ffn: int,
        max_positions: int,
        layer: Callable[[int, int, int], nn.Module] = BitLayer,
        norm: Callable[[int], nn.Module] = BertLayerNorm,
    ) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = BitEmbedding(vocab, dim, padding_idx=0)
        self.embeddings.position_embeddings = nn.Embedding(max_positions, dim)
        self.embeddings.token_type_embeddings = nn.Embedding(2, dim)
        self.embeddings.LayerNorm = norm(dim)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(layer(dim, heads, ffn) for _ in range(depth))
        self.pooler = nn.Module()
        self.pooler.dense = BitLinear(dim, dim)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = e.word_embeddings(input_ids) + e.position_embeddings(positions)
        x = e.LayerNorm(x + e.token_type_embeddings(token_type_ids))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x, self.pool(x[:, 0])

    def pool(self, first: torch.Tensor) -> torch.Tensor:
        """The pooled output from the first token's state."""
        return torch.tanh(self.pooler.dense(first))


class BitBertClassifier(nn.Module):
    """BertForSequenceClassification: the binary backbone (BiT's, or `backbone`: built from
    the same geometry, returning the sequence and the pooled output) and a float classifier."""

    def __init__(
        self,
        num_classes: int = 2,
        vocab: int = 30522,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        ffn: int = 3072,
        max_positions: int = 512,
        seq_len: int = 128,
        backbone: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.bert = (backbone or BitBertModel)(vocab, dim, depth, heads, ffn, max_positions)
        self.classifier = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        return self.classifier(pooled)

    @torch.no_grad()
    def calibrate(self, batch: torch.Tensor | None, generator: torch.Generator) -> None:
        """Set every step size alpha from one batch, as BiT does on its first forward; give
        the `move` biases trained-looking values."""
        for m in self.modules():
            if isinstance(m, LearnableBias):
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.02)
        vocab = self.bert.embeddings.word_embeddings.num_embeddings
        ids = (
            batch
            if batch is not None
            else torch.randint(0, vocab, (2, self.seq_len), generator=generator)
        )
        calibrate_steps(self, ids)


def calibrate_steps(model: nn.Module, *inputs: torch.Tensor) -> None:
    quantizers = [m for m in model.modules() if isinstance(m, ElasticBinarizer)]
    for q in quantizers:
        q.calibrating = True
    try:
        model.eval()(*inputs)
    finally:
        for q in quantizers:
            q.calibrating = False


class SignBinarizer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return binarize(x)


class SoftmaxBinarizer(nn.Module):
    """P_b = 1[softmax(s) >= 0.25 * rowmax(softmax(s))], as 0.0 / 1.0."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        p = scores.softmax(dim=-1)
        threshold = 0.25 * p.amax(dim=-1, keepdim=True)
        return (p >= threshold).to(p.dtype)


class BiViTLinear(nn.Linear):
    """BiViT's binary linear: sign of the input, per-channel-scaled sign of the weight."""

    def __init__(self, cin: int, cout: int, bias: bool = True) -> None:
        super().__init__(cin, cout, bias=bias)
        self.act_quantizer = SignBinarizer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes, scale = channel_sign(self.weight)
        out = F.linear(self.act_quantizer(x), codes) * scale
        return out if self.bias is None else out + self.bias


class BiViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = BiViTLinear(dim, dim * 3)
        self.proj = BiViTLinear(dim, dim)
        self.quant = SignBinarizer()
        self.attn_quant = SoftmaxBinarizer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = self.quant(qkv).unbind(0)
        p = self.attn_quant((q @ k.transpose(-2, -1)) * self.scale)
        return self.proj((p @ v).transpose(1, 2).reshape(b, n, c))


class BiViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = BiViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = BiViTLinear(dim, dim * 4)
        self.mlp.act = nn.GELU()
        self.mlp.fc2 = BiViTLinear(dim * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))


class BiViT(nn.Module):
    """DeiT-Tiny geometry with BiViT's binary attention and MLP."""

    def __init__(
        self,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        img_size: int = 224,
        patch: int = 16,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        tokens = (img_size // patch) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[BiViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.normal_(m.bias, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


BERT_CONFIGS: dict[str, dict[str, int]] = {
    "bit_bert_base": {"dim": 768, "depth": 12, "heads": 12, "ffn": 3072},
    "bit_bert_tiny": {"dim": 312, "depth": 4, "heads": 12, "ffn": 1200},
}


def build_bert(name: str, num_classes: int = 2, **overrides: int) -> BitBertClassifier:
    return BitBertClassifier(num_classes=num_classes, **{**BERT_CONFIGS[name], **overrides})


def build_bivit(num_classes: int = 1000, **overrides: int) -> BiViT:
    return BiViT(num_classes=num_classes, **overrides)


class FloatPassthrough(nn.Module):
    """Stands in for a binarizer in a float twin: x itself, with a step of 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step(self) -> torch.Tensor:
        return torch.tensor(1.0)


def float_twin(model: nn.Module) -> nn.Module:
    """The same geometry in float32, in place: every binary linear and embedding becomes its
    float layer with the latent weights, every binarizer a pass-through (BiViT's attention
    binarizer a softmax). The float model the binary one is compared with."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (BitLinear, BiViTLinear)):
                linear = nn.Linear(child.in_features, child.out_features, child.bias is not None)
                linear.load_state_dict(
                    {k: v for k, v in child.state_dict().items() if k in ("weight", "bias")}
                )
                setattr(parent, name, linear)
            elif isinstance(child, BitEmbedding):
                table = nn.Embedding(child.num_embeddings, child.embedding_dim, child.padding_idx)
                table.weight.data.copy_(child.weight.data)
                setattr(parent, name, table)
            elif isinstance(child, SoftmaxBinarizer):
                setattr(parent, name, nn.Softmax(dim=-1))
            elif isinstance(child, (ElasticBinarizer, SignBinarizer)):
                setattr(parent, name, FloatPassthrough())
    return model
