/**
 * The one error type of the client: every failure, the daemon's and the
 * client's own, is a {@link CorralError} with a `code`.
 */

/** Codes the daemon answers with (`{"error": {"code", "message"}}`). */
export type DaemonErrorCode =
  | "invalid"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "method_not_allowed"
  | "timeout"
  | "conflict"
  | "payload_too_large"
  | "uri_too_long"
  | "headers_too_large"
  | "spawn_failed"
  | "budget"
  | "unavailable"
  | "internal";

/** Codes of failures the client finds itself (no HTTP status). */
export type ClientErrorCode =
  /** No daemon answers at the address (no socket, connection refused or reset). */
  | "unreachable"
  /** No complete answer within the call's deadline, or the event stream went silent. */
  | "deadline_exceeded"
  /** The answer is not HTTP, not JSON where JSON is expected, or larger than any corral answer. */
  | "bad_answer"
  /** The socket is not a socket, or belongs to another user than this one or root. */
  | "untrusted_socket";

/** Every code a {@link CorralError} can have (a newer daemon may answer with others). */
export type CorralErrorCode = DaemonErrorCode | ClientErrorCode | "http_error" | (string & {});

/** The HTTP status of each daemon code, for errors that did not come with one (batch entries). */
const STATUS_OF: Record<string, number> = {
  invalid: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  method_not_allowed: 405,
  timeout: 408,
  conflict: 409,
  payload_too_large: 413,
  uri_too_long: 414,
  headers_too_large: 431,
  spawn_failed: 422,
  budget: 409,
  internal: 500,
  unavailable: 503,
};

/** The daemon's code for an HTTP status, for an error answer without corral's error body. */
const CODE_OF: Record<number, DaemonErrorCode> = {
  400: "invalid",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  408: "timeout",
  409: "conflict",
  413: "payload_too_large",
  414: "uri_too_long",
  422: "spawn_failed",
  431: "headers_too_large",
  500: "internal",
  503: "unavailable",
};

/**
 * An error of the daemon (`status` is its HTTP status, `code` its code:
 * `not_found`, `conflict`, ...) or of the client (`status` undefined, `code`
 * one of {@link ClientErrorCode}).
 */
export class CorralError extends Error {
  override readonly name = "CorralError";
  /** The daemon's error code, or the client's for failures it found itself. */
  readonly code: CorralErrorCode;
  /** The HTTP status of the daemon's answer; undefined for the client's own errors. */
  readonly status: number | undefined;

  constructor(code: CorralErrorCode, message: string, status?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.status = status;
  }

  /** The error a batch entry (or any `{code, message}`) stands for, with the status its code has. */
  static fromDetail(detail: { code: string; message: string }, status?: number): CorralError {
    return new CorralError(detail.code, detail.message, status ?? STATUS_OF[detail.code]);
  }

  /**
   * The error an HTTP error answer stands for. A body that is not corral's
   * error shape (a proxy's page, a cut answer) is kept in the message.
   */
  static fromAnswer(status: number, body: Buffer): CorralError {
    const text = body.toString("utf8");
    try {
      const detail = (JSON.parse(text) as { error?: { code?: unknown; message?: unknown } }).error;
      if (detail && typeof detail.code === "string" && typeof detail.message === "string") {
        return new CorralError(detail.code, detail.message, status);
      }
    } catch {
      // not JSON: described below
    }
    const shown = printable(text.slice(0, 300).trim()) || "no body";
    return new CorralError(CODE_OF[status] ?? "http_error", `HTTP ${status}: ${shown}`, status);
  }
}

/** A peer's text fit for a message: control characters escaped, so none reaches a terminal. */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => JSON.stringify(c).slice(1, -1));
}
