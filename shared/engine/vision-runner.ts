/**
 * Owns one request's vision hidden state while it moves through the stages. Callers (encodeImage)
 * say what to run; only what a reduction method asks for leaves the runner as a Matrix, and a
 * method's decision comes back as a TokenCombination applied here. On the CPU provider the hidden
 * state is host memory anyway; a GPU runner can keep it on the device behind this same surface
 * (I/O binding) and apply combinations there.
 */
import { VlmError } from '../errors';
import type { StageSet } from '../bundle/loader';
import { layerStage } from '../bundle/manifest';
import type { Matrix, TokenCombination } from '../methods/types';
import { runStage, type Feed } from '../onnx/run-stage';
import type { FloatRows } from '../tensor/float-rows';
import { asMatrix, f32, type F32Tensor } from '../tensor/host-tensor';
import { HiddenState } from './hidden-state';
import { checkCombination } from '../tensor/rows';
import type { RunContext } from './context';

export type ScoreName = 'scores' | 'probs' | 'keys';

export class VisionStageRunner {
  private hidden: HiddenState | undefined;
  /** Input of the current layer: the scores graph reads it with the same bias as the attention. */
  private layerInput: Feed | undefined;
  private bias: F32Tensor | undefined;

  constructor(
    private readonly stages: StageSet,
    private readonly ctx: RunContext,
  ) {}

  get tokens(): number {
    return this.current().dims[1]!;
  }

  async embed(pixelValues: F32Tensor): Promise<void> {
    this.hidden = await this.run('vision/embed', { pixel_values: pixelValues }, 'hidden_out');
    this.bias = f32([1, this.tokens]);
  }

  /** attn_bias for this and later layers (ToMe's proportional attention: log(size)). */
  setBias(bias: Float32Array): void {
    if (bias.length !== this.tokens) throw new VlmError('INTERNAL', `attn_bias of ${bias.length} for ${this.tokens} tokens`);
    this.bias = f32([1, bias.length], bias);
  }

  async attn(layer: number): Promise<void> {
    this.layerInput = this.current().feed();
    this.hidden = await this.run(layerStage('vision', layer, 'attn'), { hidden_in: this.layerInput, attn_bias: this.bias! }, 'hidden_out');
  }

  /** The layer's scores graph on the layer input; only the requested outputs are converted. */
  async scores(layer: number, needs: readonly ScoreName[]): Promise<Partial<Record<ScoreName, Matrix>>> {
    if (!this.layerInput) throw new VlmError('INTERNAL', 'scores() before attn()');
    if (needs.length === 0) return {};
    const name = layerStage('vision', layer, 'scores');
    const out = await runStage(await this.stages.get(name), { hidden_in: this.layerInput, attn_bias: this.bias! }, { outputs: needs });
    const result: Partial<Record<ScoreName, Matrix>> = {};
    for (const n of needs) {
      const t = out.host[n]!;
      this.ctx.tap?.(`${name}:${n}`, t);
      result[n] = asMatrix(t);
    }
    return result;
  }

  /** The residual stream as a T x D matrix (a view on the CPU path). */
  hiddenMatrix(): Matrix {
    return asMatrix(this.current().host());
  }

  combine(c: TokenCombination, who: string): void {
    checkCombination(c, this.tokens, who);
    this.hidden = this.current().combine(c);
    // A zero bias for the new length; proportional attention replaces it with log(size).
    this.bias = f32([1, this.tokens]);
  }

  async mlp(layer: number): Promise<void> {
    this.hidden = await this.run(layerStage('vision', layer, 'mlp'), { hidden_in: this.current().feed() }, 'hidden_out');
  }

  /** Drops the first `drop` rows (LLaVA's select_feature='patch') and runs the projector: [N, Dl] in the graph's dtype. */
  async project(drop: number): Promise<FloatRows> {
    const h = this.current();
    const features = h.rows(drop, this.tokens - drop);
    return (await this.run('vision/projector', { features }, 'embeds')).asRows();
  }

  private current(): HiddenState {
    if (!this.hidden) throw new VlmError('INTERNAL', 'vision runner used before embed()');
    return this.hidden;
  }

  /** Runs a stage whose one output stays resident until someone reads it. */
  private async run(name: string, feeds: Record<string, Feed>, output: string): Promise<HiddenState> {
    const out = await runStage(await this.stages.get(name), feeds, { outputs: [output], keep: [output] });
    const h = HiddenState.fromResident(out.kept[output]!);
    if (this.ctx.tap) this.ctx.tap(`${name}:${output}`, h.host());
    return h;
  }
}
