import { render } from '@testing-library/react';
import type { ReactElement } from 'react';
import { ToastProvider } from '../components/Toasts';

export function renderView(ui: ReactElement) {
  return render(<ToastProvider>{ui}</ToastProvider>);
}
