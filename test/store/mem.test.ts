import t from 'tap';
import { MemStore } from '../../src/store/mem.js';
import { conformance } from '../helpers/store-conformance.js';

conformance(t, async () => new MemStore());
