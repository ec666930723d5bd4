"""Runs the OFFICIAL reduction functions on deterministic inputs and writes their outputs as JSON
fixtures for the TypeScript exact-mode tests (test/methods-official.test.ts).

The official sources are not part of this repository. Put these files (from the commits named in
docs/../pruning-spec §0) in one folder and pass it as --official:

  FiCoCo_V.py              kawhiiiileo/FiCoCo  llava/model/multimodal_encoder/FiCoCo_V.py
  FiCoCo_L_checkpoint.py   kawhiiiileo/FiCoCo  llava/model/language_model/.ipynb_checkpoints/FiCoCo_L-checkpoint.py
  sparsevlm_score_v15.py   Gumpest/SparseVLMs  llava/model/language_model/score.py (main, 26a5f48)
  sparsevlm_score_v1.py    Gumpest/SparseVLMs  llava/model/language_model/score.py (b72c5d6)
  sparsevlm_utils.py       Gumpest/SparseVLMs  llava/model/language_model/utils.py
  tome_merge.py            facebookresearch/ToMe tome/merge.py
  fastv_modeling_llama.py  pkunlp-icler/FastV src/transformers/src/transformers/models/llama/modeling_llama.py

Usage: /usr/bin/python3 tools/reference/official_vectors.py --official /tmp/official --out test/fixtures/methods
Needs torch (CPU) and numpy only: `transformers` and `einops`, imported but unused by the functions
under test (einops: two rearranges), are replaced by small stand-ins below.

Inputs avoid ties: every case is re-run with the inputs perturbed by ~1e-6 relative noise and must
give the same discrete decisions, otherwise the next seed is tried.
"""
import argparse
import importlib.util
import json
import os
import sys
import textwrap
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inputs import matrix, positive  # noqa: E402


# ------------------------------------------------------------------------------------------------
# stand-ins for imports the functions under test do not use

def install_stubs():
    class _Any:
        def __init__(self, *a, **k):
            pass

    tf = types.ModuleType('transformers')
    tf.__path__ = []
    tf.__getattr__ = lambda name: _Any
    sys.modules['transformers'] = tf
    for sub in ['transformers.models', 'transformers.models.clip', 'transformers.models.clip.modeling_clip',
                'transformers.modeling_outputs']:
        m = types.ModuleType(sub)
        m.__path__ = []
        m.__getattr__ = lambda name: _Any
        sys.modules[sub] = m

    ein = types.ModuleType('einops')

    def rearrange(x, pattern):
        if pattern == 'b l r -> b l () r':
            return x[:, :, None, :]
        if pattern == 'b l r -> b () l r':
            return x[:, None, :, :]
        raise NotImplementedError(pattern)

    ein.rearrange = rearrange
    sys.modules['einops'] = ein


def load(folder, filename, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(folder, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def t(a):
    # a copy: some official functions write into their inputs (FiCoCo-L's Correlate sets diagonals)
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def jitter(a, seed):
    rng = np.random.default_rng(seed)
    return (a * (1 + 1e-6 * rng.standard_normal(a.shape))).astype(np.float32)


def stable(run, inputs, decisions):
    """True when the discrete decisions survive tiny perturbations of every input."""
    torch.manual_seed(0)
    ref = decisions(run(*inputs))
    for s in range(3):
        # a different draw of SparseVLM's density noise too: results must not depend on it
        torch.manual_seed(100 + s)
        if decisions(run(*[jitter(x, 100 + s) if isinstance(x, np.ndarray) and x.dtype == np.float32 else x for x in inputs])) != ref:
            return False
    return True


def floats(x):
    return [float(v) for v in np.asarray(x, dtype=np.float64).ravel()]


# ------------------------------------------------------------------------------------------------
# FiCoCo-V: Filter / Correlate / Compress (merge_ficoco_v) on two chained layers of LLaVA's geometry

def ficoco_v(folder):
    mod = load(folder, 'FiCoCo_V.py', 'ficoco_v_official')
    T, D, r = 577, 4, 42

    def layer(S, X):
        order, merge_idx, remain_idx, att = mod.Filter(t(S), None, r, True)
        targets, top_values = mod.Correlate(merge_idx, att)
        Y, _ = mod.merge_ficoco_v(mod.Compress, t(X)[None], merge_idx, remain_idx, top_values, targets, r, None)
        return (merge_idx.squeeze().tolist(), remain_idx.squeeze().tolist(), targets[0].tolist(), Y[0].numpy())

    for seed in range(1000, 1100):
        mod.dst_score_global = torch.full((1, 576), 1e9)  # per request, as the TS exact mode keeps it
        S1 = matrix(seed, T, T, 4.0)
        X1 = matrix(seed + 1, T, D)
        S2 = matrix(seed + 2, T - r, T - r, 4.0)
        snapshot = mod.dst_score_global.clone()

        def run(S1_, X1_, S2_):
            mod.dst_score_global = snapshot.clone()
            a = layer(S1_, X1_)
            b = layer(S2_, a[3])
            return a, b

        decisions = lambda out: (out[0][:3], out[1][:3])
        if not stable(run, [S1, X1, S2], decisions):
            continue
        a, b = run(S1, X1, S2)
        return {
            'function': 'FiCoCo_V.Filter/Correlate/Compress via merge_ficoco_v (kawhiiiileo/FiCoCo 8995e93), dst_score_global reset per request',
            'grid': 24, 'r': r,
            'hidden': {'seed': seed + 1, 'rows': T, 'cols': D},
            'layers': [
                {'scores': {'seed': seed, 'rows': T, 'cols': T, 'scale': 4.0},
                 'discard': a[0], 'remain': a[1], 'targets': a[2], 'output': floats(a[3])},
                {'scores': {'seed': seed + 2, 'rows': T - r, 'cols': T - r, 'scale': 4.0},
                 'discard': b[0], 'remain': b[1], 'targets': b[2], 'output': floats(b[3])},
            ],
        }
    raise RuntimeError('no tie-free seed for FiCoCo-V')


# ------------------------------------------------------------------------------------------------
# FiCoCo-L (checkpoint version): Filter / Correlate / Compress (merge_ficoco_l), two chained layers

def ficoco_l(folder):
    mod = load(folder, 'FiCoCo_L_checkpoint.py', 'ficoco_l_official')
    prefix, image, text, D, r = 5, 100, 19, 4, 14
    L = prefix + image + text

    def layer(S, X, V):
        Xt = t(X)[None]
        St = t(S)[None]
        merge_idx, remain_idx, lst = mod.Filter(Xt, St, V, r, True, False)
        targets, top_values = mod.Correlate(merge_idx, lst, St, r)
        pre, _ = mod.merge_ficoco_l(mod.Compress, Xt[:, :V], merge_idx, remain_idx, targets, top_values, r, None)
        out = torch.cat([pre, Xt[:, V:]], dim=1)[0].numpy()
        return merge_idx.squeeze().tolist(), remain_idx.squeeze().tolist(), targets[0].tolist(), out

    for seed in range(2000, 2100):
        S1 = matrix(seed, L, L, 2.0)
        X1 = matrix(seed + 1, L, D)
        S2 = matrix(seed + 2, L - r, L - r, 2.0)

        def run(S1_, X1_, S2_):
            a = layer(S1_, X1_, image)
            b = layer(S2_, a[3], image - r)
            return a, b

        decisions = lambda out: (sorted(out[0][0]), out[0][2], sorted(out[1][0]), out[1][2])
        if not stable(run, [S1, X1, S2], decisions):
            continue
        a, b = run(S1, X1, S2)
        return {
            'function': 'FiCoCo_L-checkpoint Filter/Correlate/Compress via merge_ficoco_l (kawhiiiileo/FiCoCo 8995e93)',
            'image': {'start': prefix, 'length': image}, 'r': r,
            'hidden': {'seed': seed + 1, 'rows': L, 'cols': D},
            'layers': [
                {'scores': {'seed': seed, 'rows': L, 'cols': L, 'scale': 2.0},
                 'discard': a[0], 'remain': a[1], 'output': floats(a[3])},
                {'scores': {'seed': seed + 2, 'rows': L - r, 'cols': L - r, 'scale': 2.0},
                 'discard': b[0], 'remain': b[1], 'output': floats(b[3])},
            ],
        }
    raise RuntimeError('no tie-free seed for FiCoCo-L')


# ------------------------------------------------------------------------------------------------
# ToMe: bipartite_soft_matching + merge_wavg, two chained layers with sizes carried

def tome(folder):
    mod = load(folder, 'tome_merge.py', 'tome_official')
    with_cls = tome_case(mod, class_token=True, T=41, seeds=range(3000, 3100))
    # Without a class token the official code leaves the unmerged A tokens strongest match first
    # (it re-sorts them by index only with one), which decides the next layer's sets A and B.
    without_cls = tome_case(mod, class_token=False, T=40, seeds=range(3200, 3300))
    return {
        'function': 'tome.merge.bipartite_soft_matching(class_token=True) + merge_wavg (facebookresearch/ToMe af95e4b)',
        **with_cls,
        'without_class_token': {
            'function': 'tome.merge.bipartite_soft_matching(class_token=False) + merge_wavg (facebookresearch/ToMe af95e4b)',
            **without_cls,
        },
    }


def tome_case(mod, class_token, T, seeds):
    C, D, r1, r2 = 8, 4, 12, 9

    def run(M1, X, M2):
        merge, _ = mod.bipartite_soft_matching(t(M1)[None], r1, class_token=class_token)
        x1, s1 = mod.merge_wavg(merge, t(X)[None])
        merge2, _ = mod.bipartite_soft_matching(t(M2)[None], r2, class_token=class_token)
        x2, s2 = mod.merge_wavg(merge2, x1, s1)
        return x1[0].numpy(), s1[0, :, 0].numpy(), x2[0].numpy(), s2[0, :, 0].numpy()

    for seed in seeds:
        M1 = matrix(seed, T, C)
        X = matrix(seed + 1, T, D)
        M2 = matrix(seed + 2, T - r1, C)
        decisions = lambda out: (np.round(out[1], 3).tolist(), np.round(out[3], 3).tolist(), np.round(out[2][:, 0], 3).tolist())
        if not stable(run, [M1, X, M2], decisions):
            continue
        x1, s1, x2, s2 = run(M1, X, M2)
        return {
            'hidden': {'seed': seed + 1, 'rows': T, 'cols': D},
            'layers': [
                {'keys': {'seed': seed, 'rows': T, 'cols': C}, 'r': r1, 'output': floats(x1), 'size': floats(s1)},
                {'keys': {'seed': seed + 2, 'rows': T - r1, 'cols': C}, 'r': r2, 'output': floats(x2), 'size': floats(s2)},
            ],
        }
    raise RuntimeError('no tie-free seed for ToMe')


# ------------------------------------------------------------------------------------------------
# SparseVLM: attn_postprocess_topk (v1.5), attn_postprocess_rank (v1), cluster_and_merge

def sparsevlm(folder):
    os.environ['RETAIN_TOKN'] = '192'
    os.environ['USE_VERSION'] = '1_0'
    v15 = load(folder, 'sparsevlm_score_v15.py', 'sparsevlm_v15')
    v1 = load(folder, 'sparsevlm_score_v1.py', 'sparsevlm_v1')
    utils = load(folder, 'sparsevlm_utils.py', 'sparsevlm_utils')
    out = {'function': 'score.attn_postprocess_topk (main 26a5f48), score.attn_postprocess_rank (b72c5d6), utils.cluster_and_merge', 'topk': [], 'rank': [], 'cluster': []}

    # attn_postprocess_topk: a layer-2 step with keep = budget, then the recycling the model code does
    prefix, Lv, Lt, D = 4, 60, 12, 6
    L = prefix + Lv + Lt
    raters = [0, 2, 3, 7, 11]
    for keep in (25, 7):
        for seed in range(4000 + keep * 10, 4100 + keep * 10):
            A = positive(seed, L, L)
            H = matrix(seed + 1, L, D)
            v15.sparse_token_dict[192] = [keep, keep, keep]

            def run(A_, H_):
                t_idx = (torch.zeros(len(raters), dtype=torch.long), torch.tensor(raters))
                mask, s_flag, rel = v15.attn_postprocess_topk(t(A_)[None, None], prefix, Lv, prefix + Lv, t_idx, 2)
                kept = torch.where(mask[0])[0].tolist()
                pruned = torch.where(mask[0] == 0)[0]
                stage1 = rel[0][pruned]
                n_rec = int(pruned.shape[0] * 0.3) + 1
                stage2_idx = stage1.topk(n_rec)[1]
                recycled = pruned[stage2_idx].tolist()
                C = int(n_rec / 10) + 1
                merged = utils.cluster_and_merge(t(H_)[None, [prefix + j for j in recycled]], C)[0].numpy()
                return kept, recycled, merged

            decisions = lambda o: (o[0], o[1], np.round(o[2], 3).tolist())
            if not stable(run, [A, H], decisions):
                continue
            torch.manual_seed(0)
            kept, recycled, merged = run(A, H)
            out['topk'].append({
                'probs': {'seed': seed, 'rows': L, 'cols': L, 'kind': 'positive'},
                'hidden': {'seed': seed + 1, 'rows': L, 'cols': D},
                'image': {'start': prefix, 'length': Lv}, 'raters': raters, 'keep': keep,
                'kept': kept, 'recycled': recycled, 'merged': floats(merged), 'clusters': int(merged.shape[0]),
            })
            break
        else:
            raise RuntimeError('no tie-free seed for attn_postprocess_topk')

    # attn_postprocess_rank: full rank, rank-deficient (dependent rater rows), and rank == Lv
    for name, Lv_, deps, scale, bias in (('full', 40, [], 2.0, 3.0), ('deficient', 40, [(4, 1, 2)], 3.0, 1.0), ('image-rank', 4, [], 1.0, 0.0)):
        L_ = prefix + Lv_ + Lt
        A = positive(5000 + Lv_, L_, L_)
        rows = [prefix + Lv_ + o for o in raters]
        for (dst, a, b) in deps:  # rater row dst := (rater a + rater b) / 2 on the image columns
            A[rows[dst], prefix:prefix + Lv_] = ((A[rows[a], prefix:prefix + Lv_].astype(np.float64) + A[rows[b], prefix:prefix + Lv_]) / 2).astype(np.float32)
        t_idx = (torch.zeros(len(raters), dtype=torch.long), torch.tensor(raters))
        mask, s_flag, rel = v1.attn_postprocess_rank(t(A)[None, None], prefix, Lv_, prefix + Lv_, t_idx, scale, bias)
        rank = int(torch.linalg.matrix_rank(t(A)[None, None].mean(1)[:, rows, prefix:prefix + Lv_].float()).item())
        out['rank'].append({
            'case': name, 'probs': {'seed': 5000 + Lv_, 'rows': L_, 'cols': L_, 'kind': 'positive'},
            # row dst := (row a + row b) / 2 in float64, rounded to float32, on the image columns
            'dependent': [[rows[d], rows[a], rows[b], prefix, prefix + Lv_] for (d, a, b) in deps],
            'image': {'start': prefix, 'length': Lv_}, 'raters': raters, 'scale': scale, 'bias': bias,
            'rank': rank, 'pruned': bool(s_flag), 'kept': torch.where(mask[0])[0].tolist(),
        })

    # cluster_and_merge alone, on a few sizes
    for n, C, D_ in ((13, 2, 5), (31, 4, 8)):
        for seed in range(6000 + n, 6100 + n):
            Z = matrix(seed, n, D_)

            def run(Z_):
                return utils.cluster_and_merge(t(Z_)[None], C)[0].numpy()

            if not stable(run, [Z], lambda o: np.round(o, 3).tolist()):
                continue
            torch.manual_seed(0)
            out['cluster'].append({'features': {'seed': seed, 'rows': n, 'cols': D_}, 'clusters': C, 'merged': floats(run(Z))})
            break
    return out


# ------------------------------------------------------------------------------------------------
# FastV: the selection block of LlamaModel.forward (inplace branch), executed from the official file

def fastv_block(folder):
    src = open(os.path.join(folder, 'fastv_modeling_llama.py')).read().splitlines()
    start = next(i for i, line in enumerate(src) if 'last_layer_attention = layer_outputs[1]' in line)
    end = next(i for i in range(start, len(src)) if 'hidden_states = hidden_states[:,keep_indexs,:]' in src[i])
    return textwrap.dedent('\n'.join(src[start:end + 1]))


def fastv(folder):
    block = fastv_block(folder)
    prefix, Lv, Lt, D, k = 6, 50, 9, 4, 17
    L = prefix + Lv + Lt
    for seed in range(7000, 7100):
        A = positive(seed, L, L)
        H = matrix(seed + 1, L, D)

        def run(A_, H_):
            env = {'torch': torch, 'layer_outputs': (None, t(A_)[None, None]), 'SYS_LENGTH': prefix,
                   'IMAGE_TOKEN_LENGTH': Lv, 'ATTENTION_RANK': k, 'device': 'cpu', 'seq_length_with_past': L,
                   'hidden_states': t(H_)[None]}
            exec(block, env)
            return env['keep_indexs'].tolist(), env['hidden_states'][0].numpy()

        if not stable(run, [A, H], lambda o: o[0]):
            continue
        keep, hidden = run(A, H)
        return {
            'function': 'FastV LlamaModel.forward inplace selection (pkunlp-icler/FastV d165972), executed from the source',
            'probs': {'seed': seed, 'rows': L, 'cols': L, 'kind': 'positive'},
            'hidden': {'seed': seed + 1, 'rows': L, 'cols': D},
            'image': {'start': prefix, 'length': Lv}, 'keep': k, 'keep_index': keep, 'output': floats(hidden),
        }
    raise RuntimeError('no tie-free seed for FastV')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--official', required=True, help='folder holding the official source files (see module doc)')
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    install_stubs()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for name, fn in (('ficoco-v', ficoco_v), ('ficoco-l', ficoco_l), ('tome', tome), ('sparsevlm', sparsevlm), ('fastv', fastv)):
        data = fn(args.official)
        data['torch'] = torch.__version__
        path = os.path.join(args.out, f'official-{name}.json')
        with open(path, 'w') as f:
            json.dump(data, f, separators=(',', ':'))
        print(path, os.path.getsize(path), 'bytes')


if __name__ == '__main__':
    main()
