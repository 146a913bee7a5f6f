/** Smoothed transfer speed and time left, for progress displays. */
export class RateMeter {
  private lastBytes = 0
  private lastTime = 0
  private rate = 0

  /** Bytes per second, smoothed. */
  get bytesPerSecond(): number {
    return this.rate
  }

  /** Seconds left, when the total is known and bytes are moving. */
  eta(bytes: number, total: number | undefined): number | undefined {
    if (!total || this.rate <= 0 || bytes >= total) return undefined
    return (total - bytes) / this.rate
  }

  update(bytes: number, now = Date.now()): void {
    if (this.lastTime === 0 || bytes < this.lastBytes) {
      this.lastTime = now
      this.lastBytes = bytes
      return
    }

    const dt = (now - this.lastTime) / 1000
    if (dt < 0.25) return
    const instant = (bytes - this.lastBytes) / dt
    this.rate = this.rate === 0 ? instant : this.rate * 0.7 + instant * 0.3
    this.lastTime = now
    this.lastBytes = bytes
  }
}
