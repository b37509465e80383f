#!/usr/bin/python3
"""Training checkpoints in real architectures' shapes, with random weights, for the benchmarks.

    /usr/bin/python3 gen_ckpt.py ARCH OUT [key=value ...]

Runs with Debian's python3-torch. Prints the number of model parameters on its last line.

- resnet18-attn: the ResNetAttn of tests/fixtures/make_checkpoints.py at full size: torchvision's
  ResNet-18 layout (7x7 stem, four stages of two BasicBlocks,
  64-128-256-512 channels) with an attention-pooling classifier head: the 512-channel feature map
  is projected to `embed`, run through one multi-head attention layer (`heads`), averaged,
  layer-normalised and classified into `classes`. Saved the way a training loop saves it:
  {epoch, model_state_dict, optimizer_state_dict (Adam: exp_avg, exp_avg_sq), loss, config}.
  Defaults (embed 128, heads 4, classes 10) give 11.3M parameters: ~45 MB of weights in a
  ~136 MB checkpoint.
- yolox-s: the YOLOX-S detector (CSPDarknet-53 at depth 0.33 and width 0.50 with Focus and SPP,
  the PAFPN neck, the decoupled head for 80 classes; SiLU, BatchNorm): 8.9M parameters. Saved as
  the YOLOX trainer saves it: {start_epoch, model, optimizer (SGD with momentum buffers),
  best_ap, curr_ap}: ~72 MB.
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- ResNet-18 + attention head: the fixtures' model (tests/fixtures/make_checkpoints.py) --------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                                "fixtures"))
from make_checkpoints import ResNetAttn  # noqa: E402


def resnet18_attn(out, embed="128", heads="4", classes="10", steps="2"):
    model = ResNetAttn(embed=int(embed), heads=int(heads), classes=int(classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(2, 3, 64, 64)
    y = torch.randint(0, int(classes), (2,))
    loss = None
    for _ in range(int(steps)):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    torch.save({"epoch": int(steps), "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "loss": float(loss),
                "config": {"arch": "resnet18-attn", "embed": int(embed), "heads": int(heads),
                           "classes": int(classes), "optimizer": "adam", "lr": 1e-3}}, out)
    return model


# ---- YOLOX-S ---------------------------------------------------------------------------------

class BaseConv(nn.Module):
    def __init__(self, cin, cout, k, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, (k - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)


class Bottleneck(nn.Module):
    def __init__(self, c, shortcut):
        super().__init__()
        self.conv1 = BaseConv(c, c, 1)
        self.conv2 = BaseConv(c, c, 3)
        self.use_add = shortcut


class CSPLayer(nn.Module):
    def __init__(self, cin, cout, n, shortcut=True):
        super().__init__()
        h = cout // 2
        self.conv1 = BaseConv(cin, h, 1)
        self.conv2 = BaseConv(cin, h, 1)
        self.conv3 = BaseConv(2 * h, cout, 1)
        self.m = nn.Sequential(*[Bottleneck(h, shortcut) for _ in range(n)])


class SPPBottleneck(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        h = cin // 2
        self.conv1 = BaseConv(cin, h, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))
        self.conv2 = BaseConv(4 * h, cout, 1)


class Focus(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = BaseConv(4 * cin, cout, k)


class CSPDarknet(nn.Module):
    def __init__(self, depth=0.33, width=0.50):
        super().__init__()
        c = int(width * 64)
        d = max(round(depth * 3), 1)
        self.stem = Focus(3, c, 3)
        self.dark2 = nn.Sequential(BaseConv(c, 2 * c, 3, 2), CSPLayer(2 * c, 2 * c, d))
        self.dark3 = nn.Sequential(BaseConv(2 * c, 4 * c, 3, 2), CSPLayer(4 * c, 4 * c, 3 * d))
        self.dark4 = nn.Sequential(BaseConv(4 * c, 8 * c, 3, 2), CSPLayer(8 * c, 8 * c, 3 * d))
        self.dark5 = nn.Sequential(BaseConv(8 * c, 16 * c, 3, 2), SPPBottleneck(16 * c, 16 * c),
                                   CSPLayer(16 * c, 16 * c, d, shortcut=False))


class PAFPN(nn.Module):
    def __init__(self, depth=0.33, width=0.50):
        super().__init__()
        c3, c4, c5 = (int(width * x) for x in (256, 512, 1024))
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width)
        self.lateral_conv0 = BaseConv(c5, c4, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False)
        self.reduce_conv1 = BaseConv(c4, c3, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False)
        self.bu_conv2 = BaseConv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False)
        self.bu_conv1 = BaseConv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False)


class YOLOXHead(nn.Module):
    def __init__(self, classes=80, width=0.50):
        super().__init__()
        h = int(256 * width)
        ins = [int(width * x) for x in (256, 512, 1024)]
        self.stems = nn.ModuleList(BaseConv(c, h, 1) for c in ins)
        self.cls_convs = nn.ModuleList(nn.Sequential(BaseConv(h, h, 3), BaseConv(h, h, 3))
                                       for _ in ins)
        self.reg_convs = nn.ModuleList(nn.Sequential(BaseConv(h, h, 3), BaseConv(h, h, 3))
                                       for _ in ins)
        self.cls_preds = nn.ModuleList(nn.Conv2d(h, classes, 1) for _ in ins)
        self.reg_preds = nn.ModuleList(nn.Conv2d(h, 4, 1) for _ in ins)
        self.obj_preds = nn.ModuleList(nn.Conv2d(h, 1, 1) for _ in ins)


class YOLOX(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = PAFPN()
        self.head = YOLOXHead()


def yolox_s(out, epochs="300"):
    model = YOLOX()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    # One optimizer step with random gradients: the momentum buffers exist, as after training.
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(1000)
    torch.save({"start_epoch": int(epochs), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "best_ap": 40.5, "curr_ap": 40.3}, out)
    return model


def main():
    arch, out = sys.argv[1], sys.argv[2]
    kw = dict(a.split("=", 1) for a in sys.argv[3:])
    seed = int(kw.pop("seed", "0"))
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    make = {"resnet18-attn": resnet18_attn, "yolox-s": yolox_s}[arch]
    model = make(out, **kw)
    print(sum(p.numel() for p in model.parameters()))


if __name__ == "__main__":
    main()
