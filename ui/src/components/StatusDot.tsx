export function StatusDot({ status, title }: { status: string; title?: string }) {
  return <span className={`dot dot-${status}`} title={title ?? status} aria-hidden />;
}
