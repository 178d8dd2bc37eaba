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
    /** Let users other than the mounting one use the mount (root needs no fuse.conf entry). */
    allowOther?: boolean;
    /** The kernel checks permissions against the attributes getattr returns. */
    defaultPermissions?: boolean;
  }
  class Fuse {
    /** The operations given to the constructor (a subclass may call them from its own handlers). */
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    protected ops: Record<string, (...args: any[]) => void>;
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
