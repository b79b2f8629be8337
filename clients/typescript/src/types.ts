/**
 * Names for the API's shapes. Each is the type generated from the daemon's
 * OpenAPI document into `schema.ts` (never written by hand).
 */
import type { components, operations } from "./schema.js";

type Schemas = components["schemas"];

export type AgentState = Schemas["AgentState"];
export type AgentStatus = Schemas["AgentStatus"];
export type BatchFailure = Schemas["BatchFailure"];
export type BatchRequest = Schemas["BatchRequest"];
export type BatchResponse = Schemas["BatchResponse"];
export type BatchResult = Schemas["BatchResult"];
export type CleanupOptions = Schemas["CleanupOptions"];
export type DaemonHealth = Schemas["DaemonHealth"];
export type DaemonStopRequest = Schemas["DaemonStopRequest"];
export type DaemonStopResponse = Schemas["DaemonStopResponse"];
export type ErrorBody = Schemas["ErrorBody"];
export type ErrorDetail = Schemas["ErrorDetail"];
/** One entry of the event log: `{seq, at, agent_id, run, kind, ...the kind's fields}`. */
export type Event = Schemas["Event"];
/** Every kind of event (`state`, `progress`, `stop_stage`, ...). */
export type EventKind = Event["kind"];
/** The event of one kind, narrowed: `EventOf<"state">` has `state`, `status`, `pid`, ... */
export type EventOf<K extends EventKind> = Extract<Event, { kind: K }>;
export type Health = Schemas["Health"];
export type HealthReport = Schemas["HealthReport"];
export type KillRequest = Schemas["KillRequest"];
export type KillResponse = Schemas["KillResponse"];
export type PauseOutcome = Schemas["PauseOutcome"];
export type PauseReport = Schemas["PauseReport"];
export type PauseRequest = Schemas["PauseRequest"];
export type Limits = Schemas["Limits"];
export type PersistentStatus = Schemas["PersistentStatus"];
export type Probes = Schemas["Probes"];
export type ProcessSummary = Schemas["ProcessSummary"];
export type ProgressUpdate = Schemas["ProgressUpdate"];
export type Removal = Schemas["Removal"];
export type RestartPolicy = Schemas["RestartPolicy"];
export type RunInfo = Schemas["RunInfo"];
export type AgentHistory = Schemas["AgentHistory"];
export type HistoryPoint = Schemas["HistoryPoint"];
export type UiLogin = Schemas["UiLogin"];
export type SpawnRequest = Schemas["SpawnRequest"];
export type SpawnResponse = Schemas["SpawnResponse"];
export type StopManyRequest = Schemas["StopManyRequest"];
export type StopReport = Schemas["StopReport"];
export type TeamBudget = Schemas["TeamBudget"];
export type TeamMember = Schemas["TeamMember"];
export type TeamRemoval = Schemas["TeamRemoval"];
export type TeamStatus = Schemas["TeamStatus"];
export type TeamUsage = Schemas["TeamUsage"];

/** A field `GET /v1/agents?fields=` can pick. */
export type StatusField = keyof AgentStatus;
/** The query parameters of `GET /v1/agents`, as the daemon takes them. */
export type ListQuery = NonNullable<operations["list"]["parameters"]["query"]>;
/** `stdout`, `stderr` or `both`. */
export type LogStream = "stdout" | "stderr" | "both";
