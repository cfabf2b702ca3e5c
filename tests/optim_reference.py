"""Independent float64 references of the update formulas (shared/DESIGN.md, playbook 7.8/7.11).

Written from the formulas, not from playbook's code: every quantity in float64, the global norm
over all grads, the clip ``g * max_norm / n`` when ``n > max_norm``, a skipped step on a
non-finite norm.
"""

from __future__ import annotations

import math

import torch


class Reference:
    def __init__(self, kind: str, params: list[torch.Tensor], **hp):
        self.kind = kind
        self.hp = hp
        self.params = [p.detach().double().clone() for p in params]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.vmax = [torch.zeros_like(p) for p in self.params]
        self.buf = [None for _ in self.params]
        self.t = 0
        self.mu_product = 1.0
        self.skipped = 0
        self.norms = []

    def step(self, grads: list[torch.Tensor], max_norm: float | None = None) -> None:
        g = [x.double() for x in grads]
        n = math.sqrt(sum(float((x * x).sum()) for x in g))
        self.norms.append(n)
        if not math.isfinite(n):
            self.skipped += 1
            return
        if max_norm is not None and n > max_norm:
            g = [x * (max_norm / n) for x in g]
        self.t += 1
        getattr(self, "_" + self.kind)(g)

    def _adam(self, grads):
        hp = self.hp
        lr, (b1, b2), eps, wd = hp["lr"], hp.get("betas", (0.9, 0.999)), hp.get("eps", 1e-8), hp.get("weight_decay", 0.0)
        decoupled, amsgrad = hp.get("decoupled", False), hp.get("amsgrad", False)
        variant, t = hp.get("variant", "torch"), self.t
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if hp.get("maximize", False):
                g = -g
            if decoupled:
                p.mul_(1 - lr * wd)
            elif wd:
                g = g + wd * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            v = self.v[i]
            if amsgrad:
                self.vmax[i] = torch.maximum(self.vmax[i], v)
                v = self.vmax[i]
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            if variant == "torch":
                p.sub_(lr / bc1 * self.m[i] / (v.sqrt() / math.sqrt(bc2) + eps))
            else:
                p.sub_(lr * math.sqrt(bc2) / bc1 * self.m[i] / (v.sqrt() + eps))

    def _nadam(self, grads):
        hp = self.hp
        lr, (b1, b2), eps, wd = hp["lr"], hp.get("betas", (0.9, 0.999)), hp.get("eps", 1e-8), hp.get("weight_decay", 0.0)
        md, decoupled, variant, t = hp.get("momentum_decay", 4e-3), hp.get("decoupled", False), hp.get("variant", "torch"), self.t
        mu = b1 * (1 - 0.5 * 0.96 ** (t * md))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * md))
        self.mu_product *= mu
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if decoupled:
                p.mul_(1 - lr * wd)
            elif wd:
                g = g + wd * p
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            bc1, bc2 = 1 - b1**t, 1 - b2**t
            if variant == "torch":
                d = (self.v[i] / bc2).sqrt() + eps
                p.sub_(lr * (1 - mu) / (1 - self.mu_product) * g / d)
                p.sub_(lr * mu_next / (1 - self.mu_product * mu_next) * self.m[i] / d)
            else:
                p.sub_(lr * math.sqrt(bc2) / bc1 * (b1 * self.m[i] + (1 - b1) * g) / (self.v[i].sqrt() + eps))

    def _sgd(self, grads):
        hp = self.hp
        lr, mom, damp, wd, nesterov = hp["lr"], hp.get("momentum", 0.0), hp.get("dampening", 0.0), hp.get("weight_decay", 0.0), hp.get("nesterov", False)
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if hp.get("maximize", False):
                g = -g
            if wd:
                g = g + wd * p
            if mom:
                if self.buf[i] is None:
                    self.buf[i] = g.clone()
                else:
                    self.buf[i] = mom * self.buf[i] + (1 - damp) * g
                g = g + mom * self.buf[i] if nesterov else self.buf[i]
            p.sub_(lr * g)
