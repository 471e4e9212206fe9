/**
 * The vehicle's phone-key GATT service (mode P). The same values as
 * src/ble/protocol/peripheral-constants.ts on the agent side: the page cannot import Node modules,
 * so they are copied here, and test/unit/web/phone-key-codec.test.ts checks they stay equal.
 */
export const PERIPHERAL_SERVICE_UUID = '16b4a5e5-1d72-4bb6-8dc9-8377e988aae2';
export const CHALLENGE_CHAR_UUID = 'b808ae76-22bb-4b4f-945f-cae656d66142';
export const ANSWER_CHAR_UUID = '4055a9af-e75f-47a0-9537-b5af92636544';
export const RESULT_CHAR_UUID = 'f3ffc6a0-648c-4d18-9bd2-0b9e12474ef1';
