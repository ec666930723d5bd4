"""Clean-mode reference implementations written from the spec (pruning-spec.md §1.2.4 and §1.3,
"recommended clean re-implementation"), in numpy, independent of the TypeScript code. Writes
test/fixtures/methods/clean-*.json for test/methods-clean.test.ts.

Usage: /usr/bin/python3 tools/reference/clean_reference.py --out test/fixtures/methods
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inputs import matrix, positive  # noqa: E402


def quantile(x, q):
    return float(np.quantile(np.asarray(x, dtype=np.float64), q))  # numpy 'linear' = torch default


def ficoco_v_clean(A, X, origin, grid, r, lam=0.35, eps=0.998, window=2, penalty=2.0):
    """One FiCoCo-V step, CLS at row 0. A: head-mean attention probabilities (T x T)."""
    A = A.astype(np.float64)
    T = A.shape[0]
    # redundancy (paper Eq. 1): λ on the patch-attention mean, (1-λ) on the CLS attention
    s = np.full(T, -np.inf)
    for i in range(1, T):
        s[i] = lam * A[i, 1:].mean() - (1 - lam) * A[0, i]
    # local penalty on the original grid; cells of discarded patches are padding
    best = {}
    for i in range(1, T):
        o = origin[i]
        w = ((o // grid) // window, (o % grid) // window)
        if w not in best or s[i] > s[best[w]]:
            best[w] = i
    for i in best.values():
        s[i] = s[i] * penalty if s[i] > 0 else s[i] / penalty
    order = sorted(range(T), key=lambda i: (-s[i], i))
    discard = order[:r]
    remain = [i for i in range(T) if i not in set(discard)]
    targets_pool = [j for j in remain if j != 0]
    Y = X.astype(np.float64)[remain].copy()
    weight = np.ones(len(remain))
    slot = {j: k for k, j in enumerate(remain)}
    for i in discard:
        c = A[i, targets_pool]
        tau = quantile(c, eps)
        J = [j for j, v in zip(targets_pool, c) if v >= tau]
        tot = sum(A[i, j] for j in J)
        for j in J:
            a = A[i, j] / tot
            Y[slot[j]] += a * X[i]
            weight[slot[j]] += a
    return remain, Y / weight[:, None]


def ficoco_l_clean(S, X, start, N, r, beta=0.6, gamma=0.6, eps=0.998):
    """One FiCoCo-L step on the true image span [start, start+N); text = rows after it."""
    S = S.astype(np.float64)
    L = S.shape[0]
    ts = start + N
    M = L - ts
    img = np.arange(start, ts)
    txt = np.arange(ts, L)
    red = beta * S[np.ix_(img, img)].mean(axis=1) - (1 - beta) * S[np.ix_(img, txt)].mean(axis=1)
    order = sorted(range(N), key=lambda i: (-red[i], i))
    discard = order[:r]
    remain = [i for i in range(N) if i not in set(discard)]
    Y = X.astype(np.float64)[start + np.array(remain)].copy()
    weight = np.ones(len(remain))
    for i in discard:
        c = np.array([gamma * S[start + i, start + j] + (1 - gamma) * (S[start + i, txt] @ S[txt, start + j]) / M for j in remain])
        tau = quantile(c, eps)
        ks = [k for k in range(len(remain)) if c[k] >= tau]
        e = np.exp(c[ks] - c[ks].max())
        w = e / e.sum()
        for k, a in zip(ks, w):
            Y[k] += a * X[start + i]
            weight[k] += a
    return remain, Y / weight[:, None]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    grid, T, D = 8, 65, 4
    origin = [-1] + list(range(grid * grid))
    v_cases = []
    for seed, r in ((8100, 20), (8200, 5)):
        A = positive(seed, T, T)
        X = matrix(seed + 1, T, D)
        remain, Y = ficoco_v_clean(A, X, origin, grid, r)
        v_cases.append({'probs': {'seed': seed, 'rows': T, 'cols': T, 'kind': 'positive'}, 'hidden': {'seed': seed + 1, 'rows': T, 'cols': D},
                        'grid': grid, 'r': r, 'remain': remain, 'output': [float(v) for v in Y.ravel()]})
    # two chained steps: the second sees the first's survivors, windows keep their original cells
    seed, r1, r2 = 8500, 12, 10
    A1 = positive(seed, T, T)
    X1 = matrix(seed + 1, T, D)
    remain1, Y1 = ficoco_v_clean(A1, X1, origin, grid, r1)
    origin2 = [origin[i] for i in remain1]
    A2 = positive(seed + 2, T - r1, T - r1)
    remain2, Y2 = ficoco_v_clean(A2, Y1.astype(np.float32), origin2, grid, r2)
    v_chain = {'hidden': {'seed': seed + 1, 'rows': T, 'cols': D}, 'grid': grid,
               'layers': [{'probs': {'seed': seed, 'rows': T, 'cols': T, 'kind': 'positive'}, 'r': r1, 'origin': [origin[i] for i in remain1], 'output': [float(v) for v in Y1.ravel()]},
                          {'probs': {'seed': seed + 2, 'rows': T - r1, 'cols': T - r1, 'kind': 'positive'}, 'r': r2, 'origin': [origin2[i] for i in remain2], 'output': [float(v) for v in Y2.ravel()]}]}
    l_cases = []
    for seed, (prefix, N, text, r) in ((8300, (3, 40, 9, 10)), (8400, (0, 30, 5, 3))):
        L = prefix + N + text
        S = matrix(seed, L, L, 2.0)
        X = matrix(seed + 1, L, D)
        remain, Y = ficoco_l_clean(S, X, prefix, N, r)
        l_cases.append({'scores': {'seed': seed, 'rows': L, 'cols': L, 'scale': 2.0}, 'hidden': {'seed': seed + 1, 'rows': L, 'cols': D},
                        'image': {'start': prefix, 'length': N}, 'r': r, 'remain': remain, 'output': [float(v) for v in Y.ravel()]})
    for name, cases, extra in (('ficoco-v', v_cases, {'chain': v_chain}), ('ficoco-l', l_cases, {})):
        path = os.path.join(args.out, f'clean-{name}.json')
        with open(path, 'w') as f:
            json.dump({'reference': 'tools/reference/clean_reference.py', 'cases': cases, **extra}, f, separators=(',', ':'))
        print(path, os.path.getsize(path), 'bytes')


if __name__ == '__main__':
    main()
