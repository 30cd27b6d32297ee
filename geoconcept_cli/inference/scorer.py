"""Top-k distinct places of many photos at matrix-product speed (the batch runs' kernel).

Scores go to distinct places only: GeoCLIP's gallery repeats 5,900 of its 100K points, and a
repeated point has the same logit at each copy, so the softmax over all rows is the softmax
over places with each place's logit counted ``multiplicity`` times. That is exactly the
probability `predict` gives, for 6% fewer products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime.scratch import Scratch
from .predictor import Predictor

OUTSIDE = -1e30  # a logit no place inside the limits comes near


class PlaceScorer:
    """Top-k distinct places of CLIP features, scoring each place once (module docstring).

    The (photos x places) logits are never held whole: blocks of BLOCK x BLOCK stay in the
    CPU's cache while their softmax denominator (an online log-sum-exp, as in flash attention)
    and top-k are taken, so the work is one product and no pass over a 100K-wide matrix (a
    top-k deeper than 16 starts from one wider span, at most WARM_BLOCKS blocks). An indexed
    gallery is searched in its index instead (``Predictor.topk``). A limited predictor's places
    outside its limits are masked in each block (Predictor.limited), and its prior added."""

    BLOCK = 1024
    RUN = 32  # columns summarised by their max, so that only runs above the floor are read
    OFFERED = 32  # offered logits a row, on average, that trigger a merge (raising the floor)
    WARM = 64  # the first span of columns holds WARM x k of them (see _block_rows)
    WARM_BLOCKS = 16  # and at most this many blocks' worth: 64 MB of logits for 1,024 photos

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        exact = predictor.index is None  # an indexed gallery: topk searches its index
        self.emb = predictor.place_emb if exact else torch.empty(0)
        self.log_count = predictor.place_copies.float().log()
        # places outside the predictor's limits: far below any logit, yet finite, so that a
        # block holding none inside keeps the online log-sum-exp a number (the next block
        # with a place inside outweighs it entirely)
        # and the predictor's prior (hints, an album's other photos), per place
        places = predictor.places
        bias = None if predictor.prior is None else predictor.prior[places].float()
        if predictor.allowed is not None:
            outside = ~predictor.allowed[places]
            bias = torch.where(outside, OUTSIDE, 0.0 if bias is None else bias)
        self.bias = bias
        self.logit_scale = float(predictor.head.logit_scale.detach().exp())
        self.temperature = predictor.temperature
        # a span's logits: a fresh array each span costs page faults that rival the exp
        self.scratch = Scratch()

    @torch.no_grad()
    def topk(self, feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, gallery rows), each (B, k): as ``Predictor.topk``."""
        p = self.predictor
        if p.index is not None:
            return p.topk(feats, k)
        img = p.head.embed_images(feats.to(p.device).float())
        k = max(1, min(k, p.place_count))  # inside the limits
        probs, idx = zip(*(self._block_rows(img[r : r + self.BLOCK], k)
                           for r in range(0, len(img), self.BLOCK)), strict=True)  # fmt: skip
        return torch.cat(probs).cpu(), self.predictor.places[torch.cat(idx)].cpu()

    def _block_rows(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, dev = len(q), q.device
        q = q * self.logit_scale  # the rounding of Predictor.logits, so that near-ties rank alike
        high = torch.full((n,), -torch.inf, device=dev)  # running max of each row's logits
        total = torch.zeros(n, dtype=torch.float64, device=dev)  # sum of exp(logit - high)
        best = torch.empty(n, 0, device=dev)
        best_idx = torch.empty(n, 0, dtype=torch.long, device=dev)
        # once k are held, a block offers only the logits above a row's k-th best: a few,
        # kept as (row, column, value) until they are merged, so a top-32 (explain's
        # runner-up pool) costs about what a top-5 does
        offered: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        pending = torch.zeros(n, dtype=torch.long, device=dev)  # offered, per row
        # the first span holds WARM x k columns (at most WARM_BLOCKS blocks): the k-th best of
        # so many sits near where it ends, so later blocks offer about k ln(N / (WARM k))
        # values a row, not k ln(N / k)
        first = self.BLOCK * min(self.WARM_BLOCKS, max(1, -(-self.WARM * k // self.BLOCK)))
        for c, end in self._spans(first):
            emb = self.emb[c:end]
            z = torch.mm(q, emb.T, out=self.scratch("logits", (n, len(emb)), q.dtype, dev))
            if self.temperature != 1.0:  # as Predictor.probabilities divides
                z.div_(self.temperature)
            if self.bias is not None:
                z.add_(self.bias[c:end])
            whole = z if len(emb) % self.RUN == 0 else F.pad(z, (0, -len(emb) % self.RUN),
                                                             value=-torch.inf)  # fmt: skip
            runs = whole.view(n, -1, self.RUN)
            run_max = runs.amax(2)  # each run of columns' max: most runs cannot enter
            if best.shape[1] < k:
                top = z.topk(min(k, z.shape[1]), dim=1)
                best, best_idx = self._merge(best, best_idx, top.values, top.indices + c, k)
            else:
                floor = best[:, -1:]
                rows, at = (run_max > floor).nonzero(as_tuple=True)  # the runs that can
                pick, within = (runs[rows, at] > floor[rows]).nonzero(as_tuple=True)
                rows, cols = rows[pick], at[pick] * self.RUN + within
                offered.append((rows, cols + c, z[rows, cols]))
                pending += torch.bincount(rows, minlength=n)
                # merge when a row averages OFFERED, or one row a block: the merge's width
                # (the busiest row's) stays under 2 blocks, whatever order the gallery is in
                if int(pending.sum()) >= n * self.OFFERED or int(pending.max()) >= self.BLOCK:
                    best, best_idx = self._merge_offered(best, best_idx, offered, k)
                    offered = []
                    pending.zero_()
            new_high = torch.maximum(high, run_max.amax(1))
            weighted = z.add_(self.log_count[c:end]).sub_(new_high[:, None]).exp_()
            total = total * torch.exp(high - new_high).double() + weighted.sum(1).double()
            high = new_high
        best, best_idx = self._merge_offered(best, best_idx, offered, k)
        lse = high.double() + total.log()
        return (best.double() - lse[:, None]).exp().float(), best_idx

    def _spans(self, first: int) -> list[tuple[int, int]]:
        """Column spans of the places: ``first`` wide, then blocks."""
        n = len(self.emb)
        starts = [0, *range(first, n, self.BLOCK)] if first < n else [0]
        return [(c, min(n, first if c == 0 else c + self.BLOCK)) for c in starts]

    @staticmethod
    def _merge(best: torch.Tensor, best_idx: torch.Tensor, values: torch.Tensor,
               columns: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """The top-k of the held and the (B, m) offered values, with their columns."""
        held, rows = torch.cat([best, values], 1), torch.cat([best_idx, columns], 1)
        keep = held.topk(min(k, held.shape[1]), dim=1)
        return keep.values, rows.gather(1, keep.indices)

    def _merge_offered(self, best: torch.Tensor, best_idx: torch.Tensor,
                       offered: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """:meth:`_merge` of (row, column, value) triples, laid out a row each (-inf after a
        row's last)."""
        if not offered:
            return best, best_idx
        rows, cols, vals = (torch.cat(part) for part in zip(*offered, strict=True))
        order = rows.argsort(stable=True)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = torch.bincount(rows, minlength=len(best))
        at = torch.arange(len(rows), device=rows.device) - (counts.cumsum(0) - counts)[rows]
        width = int(counts.max())
        values = torch.full((len(best), width), -torch.inf, device=best.device)
        columns = torch.zeros((len(best), width), dtype=torch.long, device=best.device)
        values[rows, at], columns[rows, at] = vals, cols
        return self._merge(best, best_idx, values, columns, k)
