// Types for the parts of fuse-native (CommonJS, untyped) that island uses.
declare module 'fuse-native' {
  type Cb = (...args: unknown[]) => void;
  interface FuseOptions {
    force?: boolean;
    mkdir?: boolean;
    /** false: no per-operation timeout from the binding (island bounds its own waits). */
    timeout?: number | false;
    fsname?: string;
    subtype?: string;
    debug?: boolean;
    maxRead?: number;
    autoUnmount?: boolean;
  }
  class Fuse {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    constructor(mnt: string, ops: Record<string, (...args: any[]) => void>, opts?: FuseOptions);
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
    static isConfigured(cb: (err: Error | null, configured: boolean) => void): void;
    static [errno: string]: unknown;
  }
  export = Fuse;
}
