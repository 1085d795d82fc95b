"""The naive double-loop reference of the Ranked List Loss, shared by the loss tests.

It walks over every (query, gallery) pair in plain Python with float64 numpy vectors: no masks, no
matrix products, no softmax tricks. It gives per-query L_P, L_N, the raw weight sums S+ / S- and,
for the paper semantics, the closed-form query gradient of the paper's set-based loss.
"""

import math

import numpy as np


def naive_rll(x, y, ref=None, ref_y=None, self_index=None, *, margin=0.4, alpha=None, Tn=10.0,
              Tp=0.0, lam=1.0, normalize=True, ids=None, ref_ids=None):  # fmt: skip
    """Per-query terms and paper gradients (w.r.t. the raw query rows) by explicit loops;
    ``ids``/``ref_ids`` (dataset indices): the pairs of one sample are skipped too."""
    x = np.asarray(x, dtype=np.float64)
    alpha = 1.0 + margin / 2.0 if alpha is None else alpha
    b = alpha - margin

    def unit(v):
        return v / np.linalg.norm(v) if normalize else v

    f = [unit(row) for row in x]
    if ref is None:
        g, gy = f, list(y)
        self_index = list(range(len(f))) if self_index is None else list(self_index)
    else:
        g, gy = [unit(row) for row in np.asarray(ref, dtype=np.float64)], list(ref_y)
        self_index = [-1] * len(f) if self_index is None else list(self_index)

    if ids is not None and ref_ids is None:
        ref_ids = ids
    out = {k: [] for k in ("LP", "LN", "SP", "SN", "gP", "gN", "nP", "nN")}
    for i, fi in enumerate(f):
        pos_terms, neg_terms = [], []  # (weight, gap, u_ij)
        for j, gj in enumerate(g):
            if j == self_index[i] or (ids is not None and ref_ids[j] == ids[i]):
                continue
            diff = fi - gj
            d = math.sqrt(float(np.sum(diff * diff)))
            u = diff / d if d > 0 else np.zeros_like(diff)
            if gy[j] == y[i] and d > b:
                pos_terms.append((math.exp(Tp * (d - b)), d - b, u))
            elif gy[j] != y[i] and d < alpha:
                neg_terms.append((math.exp(Tn * (alpha - d)), alpha - d, u))
        for terms, key, sign in ((pos_terms, "P", 1.0), (neg_terms, "N", -1.0)):
            s = sum(w for w, _, _ in terms)
            out["S" + key].append(s)
            out["n" + key].append(len(terms))
            out["L" + key].append(sum(w * gap for w, gap, _ in terms) / s if terms else 0.0)
            grad = np.zeros_like(fi)
            for w, _, u in terms:
                grad += sign * (w / s) * u
            out["g" + key].append(grad)
    for k in out:
        out[k] = np.array(out[k])

    def back_through_normalisation(grad_f):
        if not normalize:
            return grad_f
        res = np.zeros_like(grad_f)
        for i, (row, gf) in enumerate(zip(x, grad_f, strict=True)):
            unit_row = row / np.linalg.norm(row)
            res[i] = (gf - unit_row * np.dot(unit_row, gf)) / np.linalg.norm(row)
        return res

    out["gP"] = back_through_normalisation(out["gP"])
    out["gN"] = back_through_normalisation(out["gN"])
    out["lam"] = lam
    return out


def expected(ref, reduction):
    """Loss value and paper gradient (w.r.t. the queries) for a reduction, from naive terms."""
    lam, n = ref["lam"], len(ref["LP"])
    if reduction in ("mean", "none"):
        per_query = ref["LP"] + lam * ref["LN"]
        grad_rows = ref["gP"] + lam * ref["gN"]
        if reduction == "none":
            return per_query, grad_rows  # gradient of per_query.sum()
        return per_query.mean(), grad_rows / n
    s = ref["SP"] + ref["SN"]
    q = s / s.sum() if s.sum() > 0 else np.zeros_like(s)
    per_query = 0.5 * ref["LP"] + 0.5 * lam * ref["LN"]
    return float((q * per_query).sum()), q[:, None] * (0.5 * ref["gP"] + 0.5 * lam * ref["gN"])
