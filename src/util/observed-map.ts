/**
 * A Map that says when its entries change: `onChange` runs after every set, delete (of a
 * key that was there) and clear. For state that something else mirrors, e.g. the files the
 * native FUSE server shows, which must follow an attach or a detach at once rather than at
 * its next periodic sync.
 */
export class ObservedMap<K, V> extends Map<K, V> {
  onChange: () => void = () => undefined;

  override set(key: K, value: V): this {
    super.set(key, value);
    this.onChange();
    return this;
  }

  override delete(key: K): boolean {
    const had = super.delete(key);
    if (had) this.onChange();
    return had;
  }

  override clear(): void {
    super.clear();
    this.onChange();
  }
}
