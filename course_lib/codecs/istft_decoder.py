"""An iSTFT decoder for the codec: latent frames → ConvNeXt blocks → a predicted STFT → inverse STFT.

``CodecConfig(decoder="istft")`` swaps EnCodec's SEANet decoder (transposed convolutions that upsample the
latent ``hop`` times, layer by layer) for the generator of Vocos (Siuzdak 2023), fed the codec's latent instead
of a log-mel, as WavTokenizer (Ji et al. 2024) does in a codec::

    ẑ (B, D, F) → BatchNorm → Conv1d(D → dim, k) → LayerNorm → N × ConvNeXt block → LayerNorm   at F frames/s
                → Linear(dim → 2 · (n_fft/2 + 1)) → magnitude exp(m), phase p (+ a running advance)
                → centred Hann iSTFT with hop = the codec's hop, n_fft = ``decoder_n_fft`` → (B, 1, F · hop)

Why the course offers it: every layer runs at the frame rate (50/s) instead of up to 16 000/s, so a CPU step
is cheaper, and the network predicts a spectrum, whose magnitude the spectral losses reach directly; a
transposed-convolution decoder must first learn to place every partial with the right phase in the waveform,
which a short CPU run does not manage (the shipped ``codec_course`` comes out as a faint buzz). It is a
deviation from EnCodec/AudioGen, whose decoder mirrors the encoder; the encoder, the residual quantizer, the
tokens and the bitrate are unchanged. The head is :class:`course_lib.vocoders.vocos.ISTFTHead` with the
course's ``phase_advance`` (see that module): a steady note keeps its pitch between frames.

Two details make it train (both measured here: without either, every clip decoded to the same sound after 150
steps). The codec's latent carries a large constant offset (a vector the same for every clip and frame), and a
LayerNorm over channels sees mostly that offset: the decoder learnt the average spectrum and ignored the clip.
So the latent is first standardised per channel (``BatchNorm1d``: batch statistics in training, their running
averages in eval), and the :class:`~course_lib.codecs.codec.Codec` starts its encoder's convolution biases at
zero when it uses this decoder, so the untrained encoder's latent follows the input, not its biases.
"""

from __future__ import annotations

from torch import Tensor, nn

from course_lib.vocoders.vocos import ConvNeXtBlock, ISTFTHead, _init_weights


class ISTFTDecoder(nn.Module):
    """Latent ``(B, dimension, F)`` → audio ``(B, 1, F · hop_length)`` (see the module docstring).

    ``dim``/``intermediate_dim``/``num_layers``/``kernel_size``: the ConvNeXt backbone (Vocos: 512 / 1536 / 8 / 7);
    ``n_fft``: the synthesis window (≥ 2 · hop for the windows to overlap); ``max_magnitude`` clips exp(m);
    ``phase_advance``: a learned per-frame phase advance per bin, started at each bin's centre frequency."""

    def __init__(self, dimension: int, hop_length: int, n_fft: int, dim: int = 256, intermediate_dim: int = 768,
                 num_layers: int = 8, kernel_size: int = 7, max_magnitude: float = 1000.0,
                 phase_advance: bool = True) -> None:
        super().__init__()
        if n_fft < 2 * hop_length:
            raise ValueError(f"ISTFTDecoder: n_fft ({n_fft}) must be >= 2 x hop_length ({hop_length}) so the "
                             f"synthesis windows overlap")
        self.hop_length = hop_length
        self.input_norm = nn.BatchNorm1d(dimension)  # removes the latent's constant offset (see above)
        self.embed = nn.Conv1d(dimension, dim, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList([ConvNeXtBlock(dim, intermediate_dim, kernel_size, 1.0 / max(num_layers, 1))
                                     for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = ISTFTHead(dim, n_fft, hop_length, max_magnitude, phase_advance)
        for module in (self.embed, *self.blocks, self.head.out):
            module.apply(_init_weights)

    def forward(self, latent: Tensor) -> Tensor:
        if latent.dim() != 3 or latent.shape[1] != self.embed.in_channels:
            raise ValueError(f"ISTFTDecoder expects a latent (B, {self.embed.in_channels}, frames), got "
                             f"{tuple(latent.shape)}")
        x = self.norm(self.embed(self.input_norm(latent.float())).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x.transpose(1, 2)))
