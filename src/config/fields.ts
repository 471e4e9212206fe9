/**
 * A tiny declarative schema for the config file: every field has a type, a default and a doc
 * line, so validation, defaults, env overrides and the example config come from one place.
 */
export interface FieldBase<T> {
  readonly doc: string;
  readonly default: T;
}

export interface StringField extends FieldBase<string> {
  readonly type: 'string';
  readonly pattern?: RegExp;
  readonly patternHint?: string;
}
/**
 * One string or a list of them (the value is always a list): a single value stays valid where a
 * list became possible. From the environment, the items are separated by commas.
 */
export interface StringListField extends FieldBase<readonly string[]> {
  readonly type: 'string-list';
  readonly pattern: RegExp;
  readonly patternHint: string;
  readonly maxItems: number;
}
export interface IntField extends FieldBase<number> {
  readonly type: 'int';
  readonly min: number;
  readonly max: number;
}
export interface BoolField extends FieldBase<boolean> {
  readonly type: 'bool';
}
export interface EnumField<V extends string = string> extends FieldBase<V> {
  readonly type: 'enum';
  readonly values: readonly V[];
}
export interface OptionalStringField {
  readonly type: 'optional-string';
  readonly doc: string;
  readonly default: undefined;
  readonly example?: string;
  /** A secret (a token, a password): never printed, by `config check` or in a config problem. */
  readonly secret?: true;
}
export interface SectionField<F extends Fields = Fields> {
  readonly type: 'section';
  readonly doc: string;
  readonly fields: F;
}

export type Field =
  | StringField
  | StringListField
  | IntField
  | BoolField
  | EnumField
  | OptionalStringField
  | SectionField;
// biome-ignore lint/suspicious/noExplicitAny: recursive schema types need an open record here
export type Fields = Readonly<Record<string, any>>;

/** The value type a schema describes. */
export type ValueOf<F> =
  F extends SectionField<infer Inner>
    ? { readonly [K in keyof Inner]: ValueOf<Inner[K]> }
    : F extends EnumField<infer V>
      ? V
      : F extends IntField
        ? number
        : F extends BoolField
          ? boolean
          : F extends OptionalStringField
            ? string | undefined
            : F extends StringField
              ? string
              : F extends StringListField
                ? readonly string[]
                : never;

export const str = (doc: string, def: string, pattern?: RegExp, patternHint?: string): StringField =>
  pattern === undefined
    ? { type: 'string', doc, default: def }
    : patternHint === undefined
      ? { type: 'string', doc, default: def, pattern }
      : { type: 'string', doc, default: def, pattern, patternHint };
export const strList = (
  doc: string,
  def: readonly string[],
  pattern: RegExp,
  patternHint: string,
  maxItems: number,
): StringListField => ({ type: 'string-list', doc, default: def, pattern, patternHint, maxItems });
export const optStr = (doc: string, example?: string): OptionalStringField =>
  example === undefined
    ? { type: 'optional-string', doc, default: undefined }
    : { type: 'optional-string', doc, default: undefined, example };
/** An optional secret string: masked wherever the configuration is shown. */
export const secretStr = (doc: string): OptionalStringField => ({
  type: 'optional-string',
  doc,
  default: undefined,
  secret: true,
});
export const int = (doc: string, def: number, min: number, max: number): IntField => ({
  type: 'int',
  doc,
  default: def,
  min,
  max,
});
export const bool = (doc: string, def: boolean): BoolField => ({ type: 'bool', doc, default: def });
export const oneOf = <V extends string>(doc: string, def: V, values: readonly V[]): EnumField<V> => ({
  type: 'enum',
  doc,
  default: def,
  values,
});
export const section = <F extends Record<string, Field>>(doc: string, fields: F): SectionField<F> => ({
  type: 'section',
  doc,
  fields,
});
