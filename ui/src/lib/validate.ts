// Client-side checks that match the backend's, so mistakes show before a round trip.

export const MACHINE_NAME_RULE = "1–40 letters, digits, '-' or '_', starting with a letter or digit";

export function machineNameError(name: string): string | null {
  if (!name) return 'Name is required';
  if (name.length > 40) return `Too long: ${MACHINE_NAME_RULE}`;
  if (!/^[A-Za-z0-9]/.test(name)) return `Must start with a letter or digit (${MACHINE_NAME_RULE})`;
  if (!/^[A-Za-z0-9_-]+$/.test(name)) return `Use ${MACHINE_NAME_RULE}`;
  return null;
}

export const SECRET_NAME_RULE = "capitals, digits and '_', starting with a capital or '_'";

export function secretNameError(name: string): string | null {
  if (!name) return 'Name is required';
  if (name.length > 64) return 'At most 64 characters';
  if (!/^[A-Z_][A-Z0-9_]*$/.test(name)) return `Use ${SECRET_NAME_RULE} (it becomes an environment variable)`;
  return null;
}
