/**
 * Density-peak clustering with k-nearest-neighbour density (DPC-kNN), as SparseVLM's
 * `cluster_and_merge` (utils.py) uses it to recycle pruned tokens: pruning-spec.md §2.5 step 4.
 *
 * The official code adds U(0, 1e-6) noise to the densities so no two are equal; here equal densities
 * are ordered by index instead (lower index counts as denser), so the result is reproducible.
 */

export interface Clustering {
  /** Cluster of each input row, in 0..C-1. */
  readonly assign: Int32Array;
  /** Input row of each cluster's centre, in the code's order (descending density × distance). */
  readonly centers: readonly number[];
}

/** `rows` n x d feature rows; C clusters (C <= n). */
export function dpcKnn(rows: readonly ArrayLike<number>[], C: number): Clustering {
  const n = rows.length;
  const d = n > 0 ? rows[0]!.length : 0;
  const dist = new Float64Array(n * n);
  let distMax = 0;
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) {
        const t = rows[i]![k]! - rows[j]![k]!;
        s += t * t;
      }
      const v = Math.sqrt(s) / Math.sqrt(d);
      dist[i * n + j] = v;
      dist[j * n + i] = v;
      distMax = Math.max(distMax, v);
    }
  }
  // Density from the C nearest neighbours, the row itself (distance 0) included.
  const density = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const sorted = Float64Array.from(dist.subarray(i * n, (i + 1) * n)).sort();
    let s = 0;
    for (let k = 0; k < C; k++) s += sorted[k]! * sorted[k]!;
    density[i] = Math.exp(-s / C);
  }
  const denser = (j: number, i: number): boolean => density[j]! > density[i]! || (density[j] === density[i] && j < i);
  // Distance to the nearest denser row; the densest row gets the largest distance of all.
  const score = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let delta = distMax;
    for (let j = 0; j < n; j++) if (denser(j, i)) delta = Math.min(delta, dist[i * n + j]!);
    score[i] = delta * density[i]!;
  }
  const centers = Array.from({ length: n }, (_, i) => i)
    .sort((a, b) => score[b]! - score[a]! || a - b)
    .slice(0, C);
  const assign = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let c = 1; c < C; c++) if (dist[i * n + centers[c]!]! < dist[i * n + centers[best]!]!) best = c;
    assign[i] = best;
  }
  // A centre always belongs to its own cluster, even when another centre is at distance 0.
  centers.forEach((row, c) => {
    assign[row] = c;
  });
  return { assign, centers };
}
