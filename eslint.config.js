import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'node_modules/',
      '.quickstart/',
      '.services/',
      'bench/results/',
      'contract/proto/gen/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        console: 'readonly',
        Buffer: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        URL: 'readonly',
        AbortController: 'readonly',
        AbortSignal: 'readonly',
        TextEncoder: 'readonly',
        TextDecoder: 'readonly',
        fetch: 'readonly',
        performance: 'readonly',
        setImmediate: 'readonly',
        queueMicrotask: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  // The house rule: the sidecar (src/) and the storage node (storage-node/) share only contract/, and
  // never import each other; contract/ depends on neither; the quickstart (quickstart/) wires both.
  // A dynamic import() is how the sidecar's `quickstart` command reaches it, and is not restricted.
  ...[
    { files: ['src/**'], banned: ['storage-node', 'quickstart'] },
    { files: ['storage-node/**'], banned: ['src', 'quickstart'] },
    { files: ['contract/**'], banned: ['src', 'storage-node', 'quickstart'] },
  ].map(({ files, banned }) => ({
    files,
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: banned.map((folder) => ({
            regex: `^(\\.\\./)+${folder}/`,
            message: `${files[0].split('/')[0]}/ may not import ${folder}/: share code through contract/`,
          })),
        },
      ],
    },
  })),
);
