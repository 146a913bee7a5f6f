import {createReadStream} from 'node:fs'
import {stat} from 'node:fs/promises'
import path from 'node:path'

import type {DownloadRequest, ImageRecord, ImageSource, OpenedImage, OpenOptions} from './types.js'

import {errnoCode, fromErrno, UsageError} from '../errors.js'
import {assertOwnRef, type SingleImageOptions, singleImageRecord} from './single-image.js'

export interface FileSourceOptions extends SingleImageOptions {
  /** Resolves a relative path (default: the process's cwd). */
  cwd?: string
  path: string
}

/** One image in a local file. */
export class FileSource implements ImageSource {
  readonly description: string
  readonly path: string
  private readonly record: ImageRecord

  constructor(private readonly options: FileSourceOptions) {
    this.path = path.resolve(options.cwd ?? process.cwd(), options.path)
    this.description = `file ${this.path}`
    this.record = singleImageRecord(options, 'file', this.description)
  }

  async downloadRequest(image: ImageRecord): Promise<DownloadRequest> {
    throw new UsageError(
      'IMAGE_SOURCE_LOCAL',
      `Image ${image.id} is the local file ${this.path}: a remote node cannot fetch it itself.`,
      {image: image.id, path: this.path, suggestions: ['Relay it over SSH instead (--via relay).']},
    )
  }

  async list(): Promise<ImageRecord[]> {
    return [{...this.record}]
  }

  async open(image: ImageRecord, options: OpenOptions = {}): Promise<OpenedImage> {
    if (image.id !== this.record.id) {
      throw new UsageError(
        'IMAGE_SOURCE_MISMATCH',
        `${this.description} holds image ${this.record.id}, not ${image.id}.`,
        {
          image: image.id,
        },
      )
    }

    const offset = options.offset ?? 0
    const {size} = await this.stat()
    const stream = createReadStream(this.path, {signal: options.signal, start: offset})
    await new Promise<void>((resolve, reject) => {
      stream.once('open', () => resolve())
      stream.once('error', (error) => reject(fromErrno(error, 'cannot read', this.path, {image: image.id})))
    })
    return {offset, stream, totalSize: size}
  }

  async resolve(ref: string): Promise<ImageRecord> {
    assertOwnRef(ref, this.record, this.options.path, this.description)
    const info = await this.stat()
    return {...this.record, size: info.size}
  }

  private async stat() {
    let info
    try {
      info = await stat(this.path)
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') {
        throw new UsageError(
          'IMAGE_NOT_FOUND',
          `The image file ${this.path} (image ${this.record.id}) does not exist.`,
          {
            image: this.record.id,
            path: this.path,
            suggestions: ['Check the path (relative paths start at the current directory).'],
          },
        )
      }

      throw fromErrno(error, 'cannot read', this.path, {image: this.record.id})
    }

    if (!info.isFile()) {
      throw new UsageError('IMAGE_NOT_A_FILE', `${this.path} is not a regular file.`, {
        image: this.record.id,
        path: this.path,
        suggestions: ['Give the path of the image file itself.'],
      })
    }

    return info
  }
}
