/**
 * At most one call of `draw` per `intervalMs`, however often it is requested: the first request after
 * a quiet interval draws at once, later ones within the interval are folded into one draw at its end
 * (so the last state is always drawn). For a live view that redraws the whole screen on every change.
 */
export class FrameGate {
  private last = Number.NEGATIVE_INFINITY
  private timer: NodeJS.Timeout | undefined

  constructor(
    private readonly draw: () => void,
    private readonly intervalMs = 100,
    private readonly now = () => Date.now(),
  ) {}

  /** Drops a draw still waiting (the view is ending and draws its final state itself). */
  cancel(): void {
    clearTimeout(this.timer)
    this.timer = undefined
  }

  request(): void {
    if (this.timer) return
    const wait = this.last + this.intervalMs - this.now()
    if (wait <= 0) {
      this.fire()
      return
    }

    // unref: a pending frame never keeps the process alive; the view's end draws the final state.
    this.timer = setTimeout(() => this.fire(), wait).unref()
  }

  private fire(): void {
    this.timer = undefined
    this.last = this.now()
    this.draw()
  }
}
