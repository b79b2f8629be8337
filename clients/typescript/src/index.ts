export {
  ANSWER_LIMIT,
  CorralClient,
  DEFAULT_TIMEOUT_MS,
  EVENT_LIMIT,
  EVENT_STALL_MS,
  LINE_LIMIT,
  SOCKET_NAME,
  defaultStateDir,
} from "./client.js";
export type {
  CallOptions,
  CorralClientOptions,
  ListOptions,
  LogOptions,
  ManyOptions,
  PauseTarget,
  StopOptions,
} from "./client.js";
export { CorralError } from "./errors.js";
export type { ClientErrorCode, CorralErrorCode, DaemonErrorCode } from "./errors.js";
export type * from "./types.js";
export type { components, operations, paths } from "./schema.js";
