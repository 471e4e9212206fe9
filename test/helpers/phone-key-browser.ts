import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type CDPSession, type Page } from 'puppeteer-core';

/**
 * Debian's Chromium under puppeteer-core 24 over WebDriver BiDi (the protocol with the
 * bluetooth module), Web Bluetooth on, a profile of its own. close() ends only this browser.
 */
export const CHROMIUM = '/usr/bin/chromium';

export interface PhoneKeyBrowser {
  readonly browser: Browser;
  close(): Promise<void>;
}

export async function launchPhoneKeyBrowser(): Promise<PhoneKeyBrowser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is required: apt-get install chromium`);
  const profile = mkdtempSync(join(tmpdir(), 'va-phone-key-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    protocol: 'webDriverBiDi',
    headless: true,
    userDataDir: profile,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--enable-features=WebBluetooth',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  return {
    browser,
    close: async () => {
      await browser.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/**
 * Chromium's virtual WebAuthn authenticator on the page (CDP through the BiDi session's CDP
 * bridge): a platform authenticator with user verification, which approves by itself.
 */
export async function addVirtualPlatformAuthenticator(
  page: Page,
): Promise<{ cdp: CDPSession; authenticatorId: string }> {
  const cdp = await page.createCDPSession();
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return { cdp, authenticatorId };
}
