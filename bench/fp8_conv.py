"""Would SDXL's 3x3 convolutions run faster in FP8 than through cuDNN in 16 bits? A probe, and
the FP8 convolution ``fp8_static_probe.py --ways static-conv`` puts in the UNet.

In: nothing but a GPU of compute capability 8.9 or more (an H200) for the timings; any machine
for ``--check`` (the arithmetic, on the CPU). Out: one JSON object on stdout.

torch has no FP8 convolution. A 3x3 convolution is a matrix product over its input's patches
(im2col): for an image of ``C`` channels, each output pixel's row holds the ``9 C`` input values
around it, and the product with the ``(9 C, C_out)`` weights is the convolution. In FP8 that is
``torch._scaled_mm`` with e4m3 operands and a static per-tensor scale for each (the input's from
a calibration run, as for the linear layers), the bias added there. Gathering the patches costs
nine reads of the input and one write of a matrix nine times its size (one byte an element);
inductor fuses the gathering with the scaling and the cast into one kernel (and, in the UNet,
with the GroupNorm and SiLU before it). Whether that beats cuDNN's 16-bit convolution depends on
the shape: the product halves, the patches' traffic is added. The issue's lever (17): "FP8
convolutions if they measure faster than cuDNN at SDXL's shapes".

For each 3x3 convolution shape of SDXL's UNet at 1024x1024 (eight panels, sixteen images with
CFG), compiled both ways: milliseconds a call, cuDNN in fp16 channels_last against FP8, and the
FP8 output's relative error against the fp16 one.

    python bench/fp8_conv.py --check          # any machine: the FP8 path computes a convolution
    python bench/fp8_conv.py --images 16      # an H200
"""

from __future__ import annotations

import argparse
import json
import sys
import time

FP8_MAX = 448.0  # the largest float8_e4m3fn

# SDXL's 3x3 convolutions at a 128x128 latent: (in channels, out channels, side, stride, count
# in one UNet call). The resnets' two convolutions, the downsamplers (stride 2) and the
# upsamplers (after a nearest 2x upsampling); conv_in and conv_out are left in 16 bits.
SDXL_SHAPES = [
    (320, 320, 128, 1, 4 + 3),      # down 0's resnets, up 2's second convolutions
    (320, 320, 128, 2, 1),          # down 0's downsampler
    (320, 640, 64, 1, 1), (640, 640, 64, 1, 3 + 3), (640, 640, 64, 2, 1),
    (640, 1280, 32, 1, 1), (1280, 1280, 32, 1, 3 + 4 + 3),
    (2560, 1280, 32, 1, 2), (1920, 1280, 32, 1, 1), (1280, 1280, 64, 1, 1),  # up 0, upsampler
    (1920, 640, 64, 1, 1), (1280, 640, 64, 1, 1), (960, 640, 64, 1, 1),
    (640, 640, 128, 1, 1),          # up 1's upsampler
    (960, 320, 128, 1, 1), (640, 320, 128, 1, 2),
]


def fp8_conv_module(conv, input_amax):
    """``conv`` (a 2-D convolution, groups 1, no dilation) as an FP8 matrix product over its
    input's patches, with a static per-tensor scale for the input and one for the weights."""
    import torch
    import torch.nn.functional as F

    class FP8Conv2d(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weight = conv.weight.detach().float()
            out_ch, in_ch, kh, kw = weight.shape
            # Columns ordered (row offset, column offset, channel), as the patches are gathered.
            flat = weight.permute(0, 2, 3, 1).reshape(out_ch, kh * kw * in_ch)
            scale = (flat.abs().amax() / FP8_MAX).clamp(min=1e-12)
            self.register_buffer("weight_fp8", (flat / scale).clamp(-FP8_MAX, FP8_MAX)
                                 .to(torch.float8_e4m3fn))  # (out, K): its .t() is col-major
            self.register_buffer("weight_scale", scale.reshape(()))
            self.register_buffer("input_scale",
                                 (input_amax.float() / FP8_MAX).clamp(min=1e-12).reshape(()))
            self.bias = conv.bias
            self.kernel, self.stride, self.padding = (kh, kw), conv.stride, conv.padding

        def forward(self, x):
            n, c, h, w = x.shape
            (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
            xp = F.pad(x, (pw, pw, ph, ph))
            ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            patches = torch.cat([xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                                 for i in range(kh) for j in range(kw)], dim=1)
            rows = patches.permute(0, 2, 3, 1).reshape(n * ho * wo, kh * kw * c)
            q = (rows / self.input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=self.input_scale,
                                   scale_b=self.weight_scale, bias=self.bias, out_dtype=x.dtype)
            # (n, ho, wo, out) seen as NCHW: channels_last memory, what the next layer wants.
            return out.reshape(n, ho, wo, -1).permute(0, 3, 1, 2)

    return FP8Conv2d()


def convertible(module, fqn: str) -> bool:
    """The UNet convolutions made FP8: 3x3, groups 1, no dilation, channels a multiple of 16;
    not conv_in/conv_out (the MLPerf recipe's exclusions) nor the 1x1 shortcuts."""
    import torch

    return (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3)
            and module.groups == 1 and module.dilation == (1, 1)
            and module.in_channels % 16 == 0 and module.out_channels % 16 == 0
            and fqn not in ("conv_in", "conv_out"))


def _time(fn, x, calls: int) -> float:
    import torch

    fn(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls


def bench(images: int, calls: int, dtype_name: str) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    rows, total_16, total_8 = [], 0.0, 0.0
    for cin, cout, side, stride, count in SDXL_SHAPES:
        conv = torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1).cuda().to(dtype)
        conv = conv.to(memory_format=torch.channels_last)
        x = torch.randn(images, cin, side, side, device="cuda", dtype=dtype)
        x = x.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            fp8 = fp8_conv_module(conv, x.abs().amax())
            plain = torch.compile(conv, dynamic=False)
            quant = torch.compile(fp8, dynamic=False)
            want, got = plain(x).float(), quant(x).float()
            err = float((got - want).norm() / want.norm())
            ms16, ms8 = 1000 * _time(plain, x, calls), 1000 * _time(quant, x, calls)
        total_16 += count * ms16
        total_8 += count * ms8
        rows.append({"in": cin, "out": cout, "side": side, "stride": stride, "count": count,
                     "ms_16bit": round(ms16, 3), "ms_fp8": round(ms8, 3),
                     "relative_error": round(err, 4)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each as it ends
        torch._dynamo.reset()
    return {"images": images, "dtype": dtype_name, "shapes": rows,
            "ms_per_unet_call_16bit": round(total_16, 2), "ms_per_unet_call_fp8": round(total_8, 2)}


def check() -> dict:
    """The FP8 path against ``conv`` in float32 on the CPU: stride 1 and 2, with a bias. Fails
    (SystemExit) past a relative error of 0.1: FP8's rounding gives about 0.04, patches gathered
    in another order than the weights' columns about 1."""
    import torch

    torch.manual_seed(0)
    out = {}
    with torch.no_grad():
        for stride in (1, 2):
            conv = torch.nn.Conv2d(32, 48, 3, stride=stride, padding=1)
            x = torch.randn(2, 32, 12, 12)
            want = conv(x)
            got = fp8_conv_module(conv, x.abs().amax())(x)
            if got.shape != want.shape:
                raise SystemExit(f"stride {stride}: shape {tuple(got.shape)}, "
                                 f"expected {tuple(want.shape)}")
            out[f"stride_{stride}"] = float((got - want).norm() / want.norm())
    if max(out.values()) > 0.1:
        raise SystemExit(f"the FP8 convolution is wrong: relative errors {out}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="the arithmetic on the CPU, no timing")
    ap.add_argument("--images", type=int, default=16, help="images a call (8 panels with CFG)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = ap.parse_args()
    print(json.dumps(check() if args.check else bench(args.images, args.calls, args.dtype)))


if __name__ == "__main__":
    main()
